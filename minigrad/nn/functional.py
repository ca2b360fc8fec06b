"""minigrad.nn.functional: PyTorch's names over minigrad ops.

Shapes follow PyTorch. The softmax family, the losses and layer_norm are max-subtracted /
logsumexp-based, so large logits never overflow.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops import (Attention, Gelu, GeluMLP, LayerNorm, Linear, LogSoftmax, LogSumExp, QKVAttention,
                   Relu, Sigmoid, Softmax, Tanh)
from ..tensor import Tensor, _along, _axes
# issue 17: the activations and losses beyond these live in their own modules, re-exported here
from .activation_functions import (celu, elu, glu, hardsigmoid, hardswish, hardtanh, leaky_relu,  # noqa: F401
                                   logsigmoid, mish, relu6, selu, silu, softplus, softsign)
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,  # noqa: F401
                     huber_loss, kl_div, l1_loss, nll_loss, smooth_l1_loss)


def relu(x: Tensor) -> Tensor:
    return Relu.apply(x)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return Gelu.apply(x, approximate=approximate)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid.apply(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh.apply(x)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    _int_axis(axis, "softmax")
    return _along(x, axis, "softmax", lambda t, a: Softmax.apply(t, axis=a))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    _int_axis(axis, "log_softmax")
    return _along(x, axis, "log_softmax", lambda t, a: LogSoftmax.apply(t, axis=a))


def _int_axis(axis, op):
    if not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")


def logsumexp(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    return LogSumExp.apply(x, axis=_axes(axis, x.ndim), keepdims=keepdims)


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    target = target if isinstance(target, Tensor) else Tensor(target, dtype=input.dtype, device=input.device)
    if input.shape != target.shape:
        raise ValueError(f"mse_loss: input shape {input.shape} != target shape {target.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    d = input - target
    sq = d * d
    return {"mean": sq.mean, "sum": sq.sum}[reduction]() if reduction != "none" else sq


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims; one fused op (a CUDA kernel on a GPU)."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[len(x.shape) - len(ns):]) != ns:
        raise ValueError(f"layer_norm: input shape {x.shape} does not end with normalized_shape {ns}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != ns:
            raise ValueError(f"layer_norm: {name} shape {p.shape} != normalized_shape {ns}")
    if len(ns) != 1:   # fold several trailing dims into one row
        lead = x.shape[:x.ndim - len(ns)]
        n = int(np.prod(ns))
        y = layer_norm(x.reshape(lead + (n,)), n, None if weight is None else weight.reshape((n,)),
                       None if bias is None else bias.reshape((n,)), eps)
        return y.reshape(x.shape)
    args = [x] + [p for p in (weight, bias) if p is not None]
    kw = dict(eps=eps)
    if weight is None and bias is not None:
        raise ValueError("layer_norm: a bias without a weight is not supported; pass weight=ones")
    return LayerNorm.apply(*args, **kw)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask=None, is_causal: bool = False,
                                 scale=None) -> Tensor:
    """softmax(q kᵀ · scale + mask) v.

    q (…, Tq, d), k (…, Tk, d), v (…, Tk, dv). ``attn_mask``: bool, broadcastable to (…, Tq, Tk),
    True = may attend (PyTorch's convention). ``is_causal``: query i attends keys j <= i + Tk - Tq
    (bottom-right aligned, so a KV cache's new queries see the whole past). ``scale`` defaults to
    1/sqrt(d). One fused op: the FlashAttention-style kernel on a GPU.
    """
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q, k, v need the same rank >= 2, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "(need q (…, Tq, d), k (…, Tk, d), v (…, Tk, dv))")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    mask = key_mask = None
    tq, tk = q.shape[-2], k.shape[-2]
    if attn_mask is not None:
        mask = attn_mask.data if isinstance(attn_mask, Tensor) else q._xp.asarray(attn_mask)
        if mask.dtype != bool:
            raise TypeError(f"scaled_dot_product_attention: attn_mask must be boolean (True = attend), got {mask.dtype}")
        try:
            np.broadcast_shapes(mask.shape, q.shape[:-2] + (tq, tk))
        except ValueError:
            raise ValueError(f"scaled_dot_product_attention: attn_mask shape {mask.shape} does not broadcast to "
                             f"{q.shape[:-2] + (tq, tk)}") from None
        # a (B, 1, 1, Tk) mask is a key-padding mask, which the fused kernel takes as (B, Tk)
        if q.ndim == 4 and mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.shape[3] == tk:
            key_mask = q._xp.ascontiguousarray(q._xp.broadcast_to(mask[:, 0, 0, :], (q.shape[0], tk)))
    return Attention.apply(q, k, v, mask=mask, scale=scale, is_causal=is_causal, key_mask=key_mask)


def qkv_self_attention(qkv: Tensor, num_heads: int, is_causal: bool = False, scale=None) -> Tensor:
    """Multi-head self-attention from one packed projection: qkv (B, T, 3E) -> (B, T, E).

    Equal to: q, k, v = the three (B, T, E) thirds of the last axis; each split into num_heads
    heads (B, num_heads, T, E // num_heads); scaled_dot_product_attention(q, k, v, is_causal=...,
    scale=...) per head; the heads put back side by side. One op (ops.fused.QKVAttention): on the
    CPU a native pass that reads the heads in place, on a GPU the fused attention kernels.
    """
    if qkv.ndim != 3 or qkv.shape[-1] % 3:
        raise ValueError(f"qkv_self_attention: qkv must be (B, T, 3E), got shape {qkv.shape}")
    e = qkv.shape[-1] // 3
    if num_heads < 1 or e % num_heads:
        raise ValueError(f"qkv_self_attention: embedding size {e} is not divisible by num_heads {num_heads}")
    hs = e // num_heads
    scale = 1.0 / math.sqrt(hs) if scale is None else float(scale)
    return QKVAttention.apply(qkv, n_head=num_heads, is_causal=bool(is_causal), scale=scale)


def gelu_mlp(x: Tensor, fc_weight: Tensor, fc_bias, proj_weight: Tensor, proj_bias) -> Tensor:
    """linear(gelu(linear(x, fc_weight, fc_bias)), proj_weight, proj_bias), exact GELU.

    x (…, C); weights (out, in) as nn.Linear keeps them; biases may be None. One op
    (ops.fused.GeluMLP) over the rows of x.
    """
    if x.ndim < 1 or fc_weight.ndim != 2 or proj_weight.ndim != 2 or x.shape[-1] != fc_weight.shape[1] \
            or proj_weight.shape[1] != fc_weight.shape[0]:
        raise ValueError(f"gelu_mlp: input {x.shape}, fc_weight {fc_weight.shape} and proj_weight "
                         f"{proj_weight.shape} do not fit (weights are (out, in))")
    biases = [b for b in (fc_bias, proj_bias) if b is not None]
    y = GeluMLP.apply(x.reshape((-1, x.shape[-1])), fc_weight, proj_weight, *biases,
                      has_b1=fc_bias is not None, has_b2=proj_bias is not None)
    return y if x.ndim == 2 else y.reshape(x.shape[:-1] + (proj_weight.shape[0],))


def dropout(x: Tensor, p: float = 0.5, training: bool = True, generator=None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p). ``generator`` is a
    numpy Generator (seedable); the default is minigrad.nn.functional.default_generator.

    On "cpu" the mask is ``generator.random(x.shape) >= p``. On a device the generator gives one
    64-bit seed per call and the mask is drawn on the device from it (dropout_mask): no host
    array, no upload, and the same seed gives the same mask on every run."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    rng = generator if generator is not None else default_generator
    if x.device != "cpu":
        seed = int(rng.integers(0, 1 << 63))
        return x * Tensor._make(dropout_mask(x._xp, seed, p, x.shape, x.dtype))
    keep = rng.random(x.shape) >= p
    mask = x._xp.asarray((keep / (1.0 - p)).astype(x.dtype))
    return x * Tensor._make(mask)


# SplitMix64 (Steele, Lea, Flood 2014): the n-th output of a counter-based stream, so element i
# of a mask depends on (seed, i) alone and any number of threads can draw in parallel.
_SM_GAMMA, _SM_M1, _SM_M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_DROPOUT_KERNEL = None


def dropout_mask(xp, seed: int, p: float, shape, dtype):
    """The scaled keep-mask of dropout on array module ``xp``: element i (C order) is 1/(1-p) in
    ``dtype`` when the top 53 bits of SplitMix64(seed + (i+1)·gamma) are >= ceil(p·2^53), else 0
    (so each element is kept with probability 1-p, to 2^-53). Integer arithmetic throughout: one
    fused elementwise kernel on CuPy and these array ops elsewhere give the same bits."""
    dtype = np.dtype(dtype)
    thresh = math.ceil(p * 2.0 ** 53)
    scale = dtype.type(1.0 / (1.0 - p))
    n = int(np.prod(shape, dtype=np.int64))
    if xp.__name__.startswith("cupy"):
        global _DROPOUT_KERNEL
        if _DROPOUT_KERNEL is None:
            _DROPOUT_KERNEL = xp.ElementwiseKernel(
                "uint64 seed, uint64 thresh, T scale", "T mask",
                f"""
                unsigned long long z = seed + (unsigned long long)(i + 1) * {_SM_GAMMA}ull;
                z = (z ^ (z >> 30)) * {_SM_M1}ull;
                z = (z ^ (z >> 27)) * {_SM_M2}ull;
                z ^= z >> 31;
                mask = (z >> 11) >= thresh ? scale : (T)0;
                """, "minigrad_dropout_mask")
        out = xp.empty(shape, dtype=dtype)
        _DROPOUT_KERNEL(np.uint64(seed), np.uint64(thresh), scale, out)
        return out
    u64 = np.uint64
    z = xp.arange(1, n + 1, dtype=np.uint64) * u64(_SM_GAMMA) + u64(seed)
    z = (z ^ (z >> u64(30))) * u64(_SM_M1)
    z = (z ^ (z >> u64(27))) * u64(_SM_M2)
    z = z ^ (z >> u64(31))
    keep = (z >> u64(11)) >= u64(thresh)
    return (keep.astype(dtype) * scale).reshape(shape)


default_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed the default dropout generator."""
    global default_generator
    default_generator = np.random.default_rng(seed)


def embedding(idx, weight: Tensor) -> Tensor:
    """weight[idx]: idx an integer Tensor/array of any shape -> idx.shape + (dim,). Backward scatter-adds."""
    i = idx.data if isinstance(idx, Tensor) else weight._xp.asarray(idx)
    if i.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be integers, got {i.dtype}")
    return weight[i]


def linear(x: Tensor, weight: Tensor, bias=None) -> Tensor:
    """x @ weight.T + bias, weight (out, in) as in PyTorch; one op (see ops.linalg.Linear)."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit weight {weight.shape} (out, in)")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias shape {bias.shape} != ({weight.shape[0]},)")
    return Linear.apply(x, weight, bias) if bias is not None else Linear.apply(x, weight)
