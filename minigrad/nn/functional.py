"""minigrad.nn.functional: PyTorch's names over minigrad ops.

Shapes follow PyTorch. The softmax family, the losses and layer_norm are max-subtracted /
logsumexp-based, so large logits never overflow.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops import (Attention, Gelu, GeluMLP, LayerNorm, Linear, LogSoftmax, LogSumExp, QKVAttention,
                   Relu, Sigmoid, Softmax, Tanh)
from ..ops import AvgPool, Conv, ConvTranspose, Fold, MaxPool, Pad, Unfold
from ..tensor import Tensor, _along, _axes, _axis
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
                                 scale=None, enable_gqa: bool = False) -> Tensor:
    """softmax(q kᵀ · scale + mask) v.

    q (…, Tq, d), k (…, Tk, d), v (…, Tk, dv). ``attn_mask``, broadcastable to (…, Tq, Tk): bool,
    True = may attend (PyTorch's convention), or float, added to the scaled scores (-inf masks a
    key; a float Tensor that requires grad gets its gradient). ``is_causal``: query i attends keys
    j <= i + Tk - Tq (bottom-right aligned, so a KV cache's new queries see the whole past).
    ``scale`` defaults to 1/sqrt(d). ``enable_gqa``: grouped-query attention, q (…, Hq, Tq, d) against
    k, v (…, Hkv, Tk, d) with Hq a multiple of Hkv; query head h reads key/value head h // (Hq / Hkv).
    A query row with no key to attend gets a zero output row. One fused op: the FlashAttention-style
    kernel on a GPU (for bool key-padding masks and causal attention with equal head counts).
    """
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"scaled_dot_product_attention: q, k, v need the same rank >= 2, got {q.shape}, "
                         f"{k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not fit "
                         "(need q (…, Tq, d), k (…, Tk, d), v (…, Tk, dv))")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    tq, tk = q.shape[-2], k.shape[-2]
    mask = bias = None
    if attn_mask is not None:
        m = attn_mask.data if isinstance(attn_mask, Tensor) else q._xp.asarray(attn_mask)
        if m.dtype != bool and m.dtype.kind != "f":
            raise TypeError(f"scaled_dot_product_attention: attn_mask must be boolean (True = attend) or float "
                            f"(added to the scores), got {m.dtype}")
        try:
            np.broadcast_shapes(m.shape, q.shape[:-2] + (tq, tk))
        except ValueError:
            raise ValueError(f"scaled_dot_product_attention: attn_mask shape {m.shape} does not broadcast to "
                             f"{q.shape[:-2] + (tq, tk)}") from None
        if m.dtype == bool:
            mask = m
        else:
            bias = attn_mask if isinstance(attn_mask, Tensor) else Tensor._make(m)
            bias = bias.astype(q.dtype)
    if enable_gqa and q.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        return _grouped_query_attention(q, k, v, mask, bias, scale, is_causal)
    key_mask = None
    # a (B, 1, 1, Tk) mask is a key-padding mask, which the fused kernel takes as (B, Tk)
    if mask is not None and q.ndim == 4 and mask.ndim == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 \
            and mask.shape[3] == tk:
        key_mask = q._xp.ascontiguousarray(q._xp.broadcast_to(mask[:, 0, 0, :], (q.shape[0], tk)))
    inputs = (q, k, v) if bias is None else (q, k, v, bias)
    return Attention.apply(*inputs, mask=mask, scale=scale, is_causal=is_causal, key_mask=key_mask)


def _grouped_query_attention(q, k, v, mask, bias, scale, is_causal):
    """q (…, Hq, Tq, d) viewed as (…, Hkv, G, Tq, d) against k, v (…, Hkv, 1, Tk, d): the batch dims
    broadcast inside one Attention op, so no repeated copy of k and v is made."""
    hq, hkv = q.shape[-3], k.shape[-3]
    if v.shape[-3] != hkv or hkv == 0 or hq % hkv:
        raise ValueError(f"scaled_dot_product_attention: enable_gqa needs the query heads ({hq}) to be a multiple "
                         f"of the key/value heads (k {k.shape}, v {v.shape})")
    group = hq // hkv

    def split_heads(a):        # a (…, Hq or 1, Tq, Tk) -> (…, Hkv or 1, G or 1, Tq, Tk)
        if a.ndim < 3:
            return a
        if a.shape[-3] == 1:
            return a.reshape(a.shape[:-3] + (1, 1) + a.shape[-2:])
        return a.reshape(a.shape[:-3] + (hkv, group) + a.shape[-2:])

    q5 = q.reshape(q.shape[:-3] + (hkv, group) + q.shape[-2:])
    k5, v5 = k.expand_dims(-3), v.expand_dims(-3)
    inputs = (q5, k5, v5) if bias is None else (q5, k5, v5, split_heads(bias))
    o = Attention.apply(*inputs, mask=None if mask is None else split_heads(mask), scale=scale, is_causal=is_causal,
                        key_mask=None)
    return o.reshape(q.shape[:-1] + (v.shape[-1],))


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


# ------------------------------------------------------------------ convolution, pooling, resampling
# x is (N, C, *S) with one (…1d) or two (…2d) spatial dims, or unbatched (C, *S). The ops run on the
# window grid of minigrad.ops.conv (im2col / col2im); see its docstring for the layout.

def _ntuple(v, n: int, what: str, lo: int = 0) -> tuple:
    t = (int(v),) * n if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)
    if len(t) != n or any(a < lo for a in t):
        raise ValueError(f"{what}: expected an int or {n} ints, each >= {lo}, got {v!r}")
    return t


def _batched(x: Tensor, nd: int, name: str):
    """(x as (N, C, *S), whether a batch dim was added)."""
    if x.ndim == nd + 2:
        return x, False
    if x.ndim == nd + 1:
        return x.expand_dims(0), True
    raise ValueError(f"{name}: expected a {nd + 2}-D (N, C, *S) or {nd + 1}-D (C, *S) input, got shape {x.shape}")


def _grid_check(name, size, kernel, stride, dilation, pads):
    from ..ops.conv import grid_size
    out = tuple(grid_size(*a, *p) for a, p in zip(zip(size, kernel, stride, dilation), pads))
    if any(o < 1 for o in out):
        raise ValueError(f"{name}: input of spatial size {tuple(size)} (padding {pads}) is smaller than the "
                         f"kernel {tuple(kernel)} with dilation {tuple(dilation)}: the output would be empty")
    return out


def _conv(x, weight, bias, stride, padding, dilation, groups, nd, name):
    x, unbatched = _batched(x, nd, name)
    if weight.ndim != nd + 2:
        raise ValueError(f"{name}: weight must be (out_channels, in_channels/groups, *kernel) with {nd + 2} dims, "
                         f"got {weight.shape}")
    c, o, kernel = x.shape[1], weight.shape[0], weight.shape[2:]
    if groups < 1 or c % groups or o % groups or weight.shape[1] != c // groups:
        raise ValueError(f"{name}: input with {c} channels, weight {weight.shape} and groups={groups} do not fit "
                         "(need in_channels and out_channels divisible by groups, weight.shape[1] = in_channels/groups)")
    if bias is not None and bias.shape != (o,):
        raise ValueError(f"{name}: bias shape {bias.shape} != ({o},)")
    stride = _ntuple(stride, nd, f"{name} stride", 1)
    dilation = _ntuple(dilation, nd, f"{name} dilation", 1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * nd
        elif padding == "same":
            if stride != (1,) * nd:
                raise ValueError(f"{name}: padding='same' needs stride 1, got {stride}")
            # the total d (k - 1) split with the extra element on the high side, as PyTorch
            pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))
        else:
            raise ValueError(f"{name}: padding must be an int, a tuple, 'valid' or 'same', got {padding!r}")
    else:
        pads = tuple((p, p) for p in _ntuple(padding, nd, f"{name} padding"))
    _grid_check(name, x.shape[2:], kernel, stride, dilation, pads)
    inputs = (x, weight) if bias is None else (x, weight, bias)
    y = Conv.apply(*inputs, stride=stride, dilation=dilation, pads=pads, groups=int(groups))
    return y[0] if unbatched else y


def conv1d(x: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """1-D convolution (cross-correlation): x (N, C, L), weight (O, C/groups, k) -> (N, O, L_out).
    padding: an int, "valid" (0) or "same" (output length L; stride 1)."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(x: Tensor, weight: Tensor, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation): x (N, C, H, W), weight (O, C/groups, kh, kw) -> (N, O, H_out, W_out),
    H_out = (H + 2 p - d (kh - 1) - 1) // s + 1. padding: int, pair, "valid" or "same" (stride 1)."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, nd, name):
    x, unbatched = _batched(x, nd, name)
    if weight.ndim != nd + 2:
        raise ValueError(f"{name}: weight must be (in_channels, out_channels/groups, *kernel) with {nd + 2} dims, "
                         f"got {weight.shape}")
    c, kernel = x.shape[1], weight.shape[2:]
    if groups < 1 or c % groups or weight.shape[0] != c:
        raise ValueError(f"{name}: input with {c} channels, weight {weight.shape} and groups={groups} do not fit "
                         "(need weight.shape[0] = in_channels, divisible by groups)")
    if bias is not None and bias.shape != (weight.shape[1] * groups,):
        raise ValueError(f"{name}: bias shape {bias.shape} != ({weight.shape[1] * groups},)")
    stride = _ntuple(stride, nd, f"{name} stride", 1)
    dilation = _ntuple(dilation, nd, f"{name} dilation", 1)
    padding = _ntuple(padding, nd, f"{name} padding")
    output_padding = _ntuple(output_padding, nd, f"{name} output_padding")
    if any(op >= s for op, s in zip(output_padding, stride)):
        raise ValueError(f"{name}: output_padding {output_padding} must be smaller than stride {stride}")
    size = tuple((n - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for n, s, p, d, k, op in zip(x.shape[2:], stride, padding, dilation, kernel, output_padding))
    if any(n < 1 for n in size) or any(n < 1 for n in x.shape[2:]):
        raise ValueError(f"{name}: input of spatial size {x.shape[2:]} with kernel {tuple(kernel)}, stride {stride}, "
                         f"padding {padding} gives an empty output {size}")
    inputs = (x, weight) if bias is None else (x, weight, bias)
    y = ConvTranspose.apply(*inputs, stride=stride, dilation=dilation, pads=tuple((p, p) for p in padding),
                            groups=int(groups), size=size)
    return y[0] if unbatched else y


def conv_transpose1d(x: Tensor, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed 1-D convolution: x (N, Cin, L), weight (Cin, Cout/groups, k) -> (N, Cout, L_out),
    L_out = (L - 1) s - 2 p + d (k - 1) + output_padding + 1 (output_padding < stride)."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, 1, "conv_transpose1d")


def conv_transpose2d(x: Tensor, weight: Tensor, bias=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                     dilation=1) -> Tensor:
    """Transposed 2-D convolution (the gradient of conv2d with respect to its input, as a layer):
    x (N, Cin, H, W), weight (Cin, Cout/groups, kh, kw) -> (N, Cout, H_out, W_out),
    H_out = (H - 1) s - 2 p + d (kh - 1) + output_padding + 1 (output_padding < stride)."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation, 2, "conv_transpose2d")


def _pool_pads(name, size, kernel, stride, dilation, padding, ceil_mode):
    """Per-dim (lo, hi) padding; ceil_mode adds high padding for a last, partial window when that window
    starts inside the input or its low padding (PyTorch's rule)."""
    if any(n < 1 for n in size):
        raise ValueError(f"{name}: the input's spatial dims must be non-empty, got {tuple(size)}")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise ValueError(f"{name}: padding {padding} must be at most half the kernel size {kernel}")
    pads = []
    for n, k, s, d, p in zip(size, kernel, stride, dilation, padding):
        span = n + 2 * p - d * (k - 1) - 1
        out = span // s + 1
        if ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= n + p:
                out -= 1
        pads.append((p, max(p, (out - 1) * s + d * (k - 1) + 1 - n - p)))
    pads = tuple(pads)
    _grid_check(name, size, kernel, stride, dilation, pads)
    return pads


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, nd, name):
    x, unbatched = _batched(x, nd, name)
    kernel = _ntuple(kernel_size, nd, f"{name} kernel_size", 1)
    stride = kernel if stride is None else _ntuple(stride, nd, f"{name} stride", 1)
    dilation = _ntuple(dilation, nd, f"{name} dilation", 1)
    pads = _pool_pads(name, x.shape[2:], kernel, stride, dilation, _ntuple(padding, nd, f"{name} padding"), ceil_mode)
    y = MaxPool.apply(x, kernel=kernel, stride=stride, dilation=dilation, pads=pads)
    return y[0] if unbatched else y


def max_pool1d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max over windows of x (N, C, L); stride defaults to kernel_size; padding never wins."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, 1, "max_pool1d")


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max over windows of x (N, C, H, W); stride defaults to kernel_size; padding never wins. The gradient
    goes to the first maximum of each window (row-major), summed where windows overlap."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, 2, "max_pool2d")


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, nd, name):
    x, unbatched = _batched(x, nd, name)
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: needs a floating-point input, got {x.dtype}")
    kernel = _ntuple(kernel_size, nd, f"{name} kernel_size", 1)
    stride = kernel if stride is None else _ntuple(stride, nd, f"{name} stride", 1)
    padding = _ntuple(padding, nd, f"{name} padding")
    size = x.shape[2:]
    pads = _pool_pads(name, size, kernel, stride, (1,) * nd, padding, ceil_mode)
    if divisor_override is not None:
        if int(divisor_override) < 1:
            raise ValueError(f"{name}: divisor_override must be >= 1, got {divisor_override}")
        divisor = int(divisor_override)
    else:
        # per dim, the window [l s - p, l s - p + k) clipped to the counted region: the padded input
        # (count_include_pad) or the input itself; the divisor is the product over dims
        counts = 1
        for n, k, s, p, (lo, hi) in zip(size, kernel, stride, padding, pads):
            start = np.arange((n + lo + hi - k) // s + 1) * s - p
            lo_b, hi_b = (-p, n + p) if count_include_pad else (0, n)
            c = np.minimum(start + k, hi_b) - np.maximum(start, lo_b)
            counts = np.multiply.outer(counts, c) if not np.isscalar(counts) else counts * c
        counts = np.asarray(counts)
        divisor = int(counts.flat[0]) if (counts == counts.flat[0]).all() else x._xp.asarray(counts)
    y = AvgPool.apply(x, kernel=kernel, stride=stride, pads=pads, divisor=divisor)
    return y[0] if unbatched else y


def avg_pool1d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Mean over windows of x (N, C, L); count_include_pad: the zero padding counts in the divisor."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, None, 1, "avg_pool1d")


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override=None) -> Tensor:
    """Mean over windows of x (N, C, H, W); count_include_pad: the zero padding counts in the divisor;
    divisor_override: divide every window sum by this instead."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, 2, "avg_pool2d")


def _adaptive_mean(x: Tensor, axis: int, out: int) -> Tensor:
    """Mean over ``out`` windows [floor(i n / out), ceil((i + 1) n / out)) along ``axis``."""
    from ..functions import concatenate
    n = x.shape[axis]
    if out == n:
        return x
    if n % out == 0:
        return x.reshape(x.shape[:axis] + (out, n // out) + x.shape[axis + 1:]).mean(axis=axis + 1)
    lead = (slice(None),) * axis
    return concatenate([x[lead + (slice(i * n // out, -(-(i + 1) * n // out)),)].mean(axis=axis, keepdims=True)
                        for i in range(out)], axis=axis)


def _adaptive_avg_pool(x, output_size, nd, name):
    x, unbatched = _batched(x, nd, name)
    if isinstance(output_size, (int, np.integer)):
        output_size = (int(output_size),) * nd
    out = tuple(x.shape[2 + i] if o is None else int(o) for i, o in enumerate(output_size))
    if len(out) != nd or any(o < 1 for o in out) or any(n < 1 for n in x.shape[2:]):
        raise ValueError(f"{name}: output_size {output_size} does not fit input {x.shape} (need {nd} sizes >= 1 "
                         "and a non-empty input)")
    for i, o in enumerate(out):
        x = _adaptive_mean(x, 2 + i, o)
    return x[0] if unbatched else x


def adaptive_avg_pool1d(x: Tensor, output_size) -> Tensor:
    """Mean over ``output_size`` windows of x (N, C, L): window i is [floor(i L / o), ceil((i + 1) L / o))."""
    return _adaptive_avg_pool(x, output_size, 1, "adaptive_avg_pool1d")


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Mean over an (oh, ow) grid of windows of x (N, C, H, W) (an int: square; None keeps that size);
    window (i, j) spans rows [floor(i H / oh), ceil((i + 1) H / oh)) and the same for columns."""
    return _adaptive_avg_pool(x, output_size, 2, "adaptive_avg_pool2d")


_INTERP = {"nearest": None, "nearest-exact": None, "linear": 1, "bilinear": 2, "area": None}


def interpolate(x: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners=None) -> Tensor:
    """Resize the spatial dims of x (N, C, *S), as PyTorch: to ``size`` or by ``scale_factor``.

    modes: "nearest" (source floor(dst · scale)), "nearest-exact" (floor((dst + 0.5) · scale)),
    "linear" (1 spatial dim) and "bilinear" (2), separable linear interpolation with source
    (dst + 0.5) · scale − 0.5 (align_corners False) or dst · (S − 1) / (out − 1) (True), and "area"
    (adaptive average pooling). scale = 1 / scale_factor when given, else S / size. Each output is a
    gather of one or two inputs per axis, so the gradient is an index-add (repeats accumulate).
    """
    if mode not in _INTERP:
        raise ValueError(f"interpolate: mode must be one of {', '.join(_INTERP)}, got {mode!r}")
    nd = x.ndim - 2
    if nd < 1:
        raise ValueError(f"interpolate: input must be (N, C, *spatial), got shape {x.shape}")
    if _INTERP[mode] is not None and _INTERP[mode] != nd:
        raise ValueError(f"interpolate: mode {mode!r} needs {_INTERP[mode]} spatial dims, the input {x.shape} has {nd}")
    if align_corners is not None and _INTERP[mode] is None:
        raise ValueError(f"interpolate: align_corners applies to the linear modes only, not {mode!r}")
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    src = x.shape[2:]
    if size is not None:
        out = _ntuple(size, nd, "interpolate size", 1)
        scales = [n / o for n, o in zip(src, out)]
    else:
        factors = [float(f) for f in ((scale_factor,) * nd if np.isscalar(scale_factor) else scale_factor)]
        if len(factors) != nd or any(f <= 0 for f in factors):
            raise ValueError(f"interpolate: scale_factor must be one or {nd} positive numbers, got {scale_factor!r}")
        out = tuple(math.floor(n * f) for n, f in zip(src, factors))
        scales = [1.0 / f for f in factors]
        if any(o < 1 for o in out):
            raise ValueError(f"interpolate: scale_factor {scale_factor} gives an empty output {out} for input {src}")
    if any(n < 1 for n in src):
        raise ValueError(f"interpolate: the input's spatial dims must be non-empty, got shape {x.shape}")
    if mode == "area":
        return _adaptive_avg_pool(x, out, nd, "interpolate")
    xp = x._xp
    for i, (n, o, scale) in enumerate(zip(src, out, scales)):
        axis, lead = 2 + i, (slice(None),) * (2 + i)
        if mode.startswith("nearest"):
            # PyTorch computes the nearest source in float32: floorf(dst * scale)
            d = np.arange(o, dtype=np.float32) + (np.float32(0.5) if mode == "nearest-exact" else np.float32(0))
            j = np.minimum(np.floor(d * np.float32(scale)).astype(np.int64), n - 1)
            x = x[lead + (xp.asarray(j),)]
            continue
        if align_corners:
            pos = np.arange(o) * ((n - 1) / (o - 1) if o > 1 else 0.0)
        else:
            pos = np.maximum((np.arange(o) + 0.5) * scale - 0.5, 0.0)
        j0 = np.minimum(np.floor(pos).astype(np.int64), n - 1)
        j1 = np.minimum(j0 + 1, n - 1)
        w1 = (pos - j0).reshape((o,) + (1,) * (x.ndim - axis - 1))
        x = x[lead + (xp.asarray(j0),)] * Tensor._make(xp.asarray((1.0 - w1).astype(x.dtype))) \
            + x[lead + (xp.asarray(j1),)] * Tensor._make(xp.asarray(w1.astype(x.dtype)))
    return x


def pad(x: Tensor, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad as PyTorch: ``pad`` = (left, right) for the last dim, then (top, bottom) for the one before,
    and so on; all >= 0. mode: "constant" (``value``), "reflect" (mirror about the edge element),
    "replicate" (repeat the edge) or "circular" (wrap around)."""
    from ..ops.movement import PAD_MODES
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    p = tuple(int(a) for a in pad)
    if len(p) % 2 or len(p) // 2 > x.ndim:
        raise ValueError(f"pad: needs an even number of pads, at most 2 per dimension ({x.ndim}), got {pad!r}")
    if any(a < 0 for a in p):
        raise ValueError(f"pad: negative padding (cropping) is not supported, got {pad!r}; slice the tensor instead")
    pads = [(0, 0)] * x.ndim
    for i in range(len(p) // 2):
        pads[x.ndim - 1 - i] = (p[2 * i], p[2 * i + 1])
    if mode != "constant":
        for n, (lo, hi) in zip(x.shape, pads):
            if (lo or hi) and n == 0:
                raise ValueError(f"pad: mode {mode!r} cannot pad an empty dimension (shape {x.shape})")
    return Pad.apply(x, pads=tuple(pads), mode=mode, value=value)


def unfold(x: Tensor, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """im2col: x (N, C, H, W) -> (N, C·kh·kw, L), one column per window position (L of them, row-major);
    the column lists each channel's kh·kw window in row-major order."""
    x, unbatched = _batched(x, 2, "unfold")
    kernel = _ntuple(kernel_size, 2, "unfold kernel_size", 1)
    dilation = _ntuple(dilation, 2, "unfold dilation", 1)
    stride = _ntuple(stride, 2, "unfold stride", 1)
    pads = tuple((p, p) for p in _ntuple(padding, 2, "unfold padding"))
    _grid_check("unfold", x.shape[2:], kernel, stride, dilation, pads)
    y = Unfold.apply(x, kernel=kernel, stride=stride, dilation=dilation, pads=pads)
    return y[0] if unbatched else y


def fold(x: Tensor, output_size, kernel_size, dilation=1, padding=0, stride=1) -> Tensor:
    """col2im, the adjoint of unfold: x (N, C·kh·kw, L) -> (N, C, *output_size), overlapping windows summed."""
    if x.ndim == 2:
        return fold(x.expand_dims(0), output_size, kernel_size, dilation, padding, stride)[0]
    if x.ndim != 3:
        raise ValueError(f"fold: expected a (N, C·kh·kw, L) input, got shape {x.shape}")
    size = _ntuple(output_size, 2, "fold output_size", 1)
    kernel = _ntuple(kernel_size, 2, "fold kernel_size", 1)
    dilation = _ntuple(dilation, 2, "fold dilation", 1)
    stride = _ntuple(stride, 2, "fold stride", 1)
    pads = tuple((p, p) for p in _ntuple(padding, 2, "fold padding"))
    _grid_check("fold", size, kernel, stride, dilation, pads)
    return Fold.apply(x, size=size, kernel=kernel, stride=stride, dilation=dilation, pads=pads)


# ------------------------------------------------------------------ batch, group and RMS normalisation
# Written with Tensor ops (mean, var, rsqrt as a power), so both derivative orders come with them.

def _channel_shape(x: Tensor):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def batch_norm(x: Tensor, running_mean=None, running_var=None, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of x (N, C, *) over the batch and spatial dims.

    training: with the batch's mean and (biased) variance, and, when given, the running statistics
    updated in place: running = (1 - momentum) running + momentum · batch (the variance unbiased,
    n / (n - 1), as PyTorch). Otherwise with running_mean and running_var."""
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected (N, C, *) input, got shape {x.shape}")
    c = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"batch_norm: {name} shape {tuple(t.shape)} != ({c},) for input {x.shape}")
    axes = (0,) + tuple(range(2, x.ndim))
    shape = _channel_shape(x)
    if training:
        n = x.shape[0] * math.prod(x.shape[2:])
        if n <= 1:
            raise ValueError(f"batch_norm: training needs more than one value per channel, input {x.shape}")
        mean = x.mean(axis=axes, keepdims=True)
        d = x - mean
        var = (d * d).mean(axis=axes, keepdims=True)
        if running_mean is not None or running_var is not None:
            _update_running(running_mean, mean.data.reshape(c), momentum)
            _update_running(running_var, var.data.reshape(c) * (n / (n - 1)), momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: evaluation (training=False) needs running_mean and running_var")
        mean = _constant(running_mean, x).reshape(shape)
        var = _constant(running_var, x).reshape(shape)
        d = x - mean
    y = d * (var + eps) ** -0.5
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _constant(t, like: Tensor) -> Tensor:
    a = t.data if isinstance(t, Tensor) else like._xp.asarray(t)
    return Tensor._make(a.astype(like.dtype, copy=False))


def _update_running(stat, batch, momentum):
    """stat (a Tensor) <- (1 - momentum) stat + momentum batch, in place, outside any graph."""
    if stat is None:
        return
    a = stat.data if isinstance(stat, Tensor) else stat
    a *= 1.0 - momentum
    a += (momentum * batch).astype(a.dtype, copy=False)


def group_norm(x: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Split the C channels of x (N, C, *) into num_groups groups and normalise each group of each
    sample over its channels and positions; then a per-channel weight and bias."""
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected (N, C, *) input, got shape {x.shape}")
    n, c = x.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: {c} channels cannot be split into {num_groups} groups")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise ValueError(f"group_norm: {name} shape {t.shape} != ({c},)")
    g = x.reshape((n, num_groups, x.size // max(n * num_groups, 1)))
    mean = g.mean(axis=-1, keepdims=True)
    d = g - mean
    y = (d * ((d * d).mean(axis=-1, keepdims=True) + eps) ** -0.5).reshape(x.shape)
    shape = _channel_shape(x)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def rms_norm(x: Tensor, normalized_shape, weight=None, eps=None) -> Tensor:
    """x / sqrt(mean(x², trailing normalized_shape dims) + eps) · weight; eps defaults to the float
    type's machine epsilon (as PyTorch)."""
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(ns):]) != ns or len(ns) > x.ndim:
        raise ValueError(f"rms_norm: input shape {x.shape} does not end with normalized_shape {ns}")
    if weight is not None and weight.shape != ns:
        raise ValueError(f"rms_norm: weight shape {weight.shape} != normalized_shape {ns}")
    eps = float(np.finfo(x.dtype).eps) if eps is None else float(eps)
    axes = tuple(range(x.ndim - len(ns), x.ndim))
    y = x * ((x * x).mean(axis=axes, keepdims=True) + eps) ** -0.5
    return y * weight if weight is not None else y


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
