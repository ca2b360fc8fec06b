"""Scaled dot-product attention: softmax(q kᵀ · scale + bias, masked) v, with its native CPU and CUDA
kernel variants, and the Tensor-op pieces (probabilities, vector-Jacobian product) that the
create_graph backwards of this op and of the fused QKVAttention share.

Which implementation takes what (minigrad.dispatch picks the first variant whose ``takes`` accepts):
  Attention (the reference)  everything: bool mask, float additive bias (differentiable), causal,
                             broadcasting batch dims (grouped-query attention is q viewed as
                             (B, Hkv, G, Tq, d) against k, v (B, Hkv, 1, Tk, d)), any head size.
  AttentionKernel (CUDA)     q, k, v (B, H, T, d) with equal B and H, causal and/or a bool key-padding
                             mask (B, Tk); no float bias, no GQA, no other mask. float32/float64 with
                             16 <= d <= 128 (version 1), float16/bfloat16 with 1 <= d <= 128
                             (version 2, tensor cores; under autocast it gets half arrays, see
                             ``Attention.autocast_half_storage``).
  AttentionNative (CPU)      NumPy float32/float64, causal and/or a key-padding mask (B, Tk) for
                             4-D q; batch dims may broadcast (so GQA without a mask runs here);
                             no float bias, no other bool mask.
"""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import as_dtype, device_of
from ._util import unbroadcast, xp_of
from .elementwise import Where
from .shape import sum_to_array
from .softmax import Softmax


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


def attention_reference(q, k, v, mask, scale, bias=None):
    """softmax(q kᵀ scale + bias, masked) v on arrays. mask: bool (…, Tq, Tk), True = may attend, or None;
    bias: float broadcastable to (…, Tq, Tk) (-inf entries act as masked), or None. A query row with
    no attendable key gets a zero output row. Returns (o, p), p (…, Tq, Tk)."""
    xp = xp_of(q)
    s = q @ k.swapaxes(-1, -2)                                # (…, Tq, Tk), scaled and softmaxed in place
    s *= scale
    if bias is not None:
        s += bias
    if mask is not None:
        s += xp.where(mask, 0.0, -xp.inf).astype(s.dtype)      # an additive bias: one broadcast pass
    masked = mask is not None or bias is not None
    m = s.max(axis=-1, keepdims=True)
    if masked:
        m = xp.where(xp.isfinite(m), m, 0).astype(s.dtype, copy=False)
    s -= m
    xp.exp(s, out=s)
    den = s.sum(axis=-1, keepdims=True)
    if masked:
        den[den == 0] = 1
    s /= den
    return s @ v, s


def half_kernels_run_on(a) -> bool:
    """Whether the version-2 (half-type) kernels can run where array ``a`` lives: anywhere the CPU
    emulator runs them, on a GPU of compute capability 8.0 or later (mma.sync bf16, cvt.rn.bf16)."""
    if device_of(a) != "cuda":
        return True
    try:
        return int(xp_of(a).cuda.Device().compute_capability) >= 80
    except Exception:   # noqa: BLE001  (no CuPy device behind it, e.g. the strict stand-in)
        return False


def kernel_head_dim(dtype, d) -> bool:
    """Whether a CUDA attention kernel takes head dim d in ``dtype``: version 1 (float32, float64)
    16..128, version 2 (float16, bfloat16) 1..128; no other dtype."""
    if dtype in (np.float32, np.float64):
        return 16 <= d <= 128
    return dtype.itemsize == 2 and dtype.name in ("float16", "bfloat16") and 1 <= d <= 128


def _kernel_fits(q, k, v, dtype, bias, mask, key_mask) -> bool:
    """Whether AttentionKernel runs q, k, v (of ``dtype``, or cast to it) with these options."""
    return (bias is None and q.ndim == 4 and kernel_head_dim(dtype, q.shape[-1]) and v.shape[-1] == q.shape[-1]
            and q.shape[:2] == k.shape[:2] == v.shape[:2] and (mask is None or key_mask is not None)
            and dispatch.use_kernels(device_of(q)) and (dtype.itemsize > 2 or half_kernels_run_on(q)))


def causal_mask(xp, tq, tk):
    """(Tq, Tk) bool, bottom-right aligned: query i sees key j iff j <= i + (Tk - Tq)."""
    return xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)


def attention_probs(q, k, mask, scale, bias=None):
    """The attention probabilities as a differentiable Tensor expression (for create_graph).
    bias: a Tensor added to the scores; its -inf entries join the mask (and get zero gradient)."""
    s = (q @ k.swapaxes(-1, -2)) * scale
    if bias is not None:
        xp = xp_of(bias.data)
        finite = bias.data != -xp.inf
        if bool(finite.all()):
            s = s + bias
        else:
            s = s + Where.apply(bias, _T(xp.zeros((), dtype=bias.dtype)), cond=finite)
            mask = finite if mask is None else (mask & finite)
    if mask is None:
        return Softmax.apply(s, axis=-1)
    xp = xp_of(q.data)
    mask = xp.broadcast_to(mask, s.shape)
    any_key = mask.any(axis=-1, keepdims=True)
    # a finite fill, so a row with no key stays NaN-free (it is zeroed below)
    s = Where.apply(s, _T(xp.asarray(-1e30, dtype=s.dtype)), cond=mask)
    p = Softmax.apply(s, axis=-1)
    return p * _T((mask & any_key).astype(s.dtype))


def attention_vjp(q, k, v, g, mask, scale):
    """(dq, dk, dv) of attention at g (…, Tq, dv), in Tensor ops with p recomputed from q and k,
    so the gradient is itself differentiable (create_graph). Shapes before unbroadcasting."""
    return attention_vjp_ds(q, k, v, g, mask, scale)[:3]


def attention_vjp_ds(q, k, v, g, mask, scale, bias=None):
    """(dq, dk, dv, ds) as attention_vjp, with a bias; ds = p ∘ (dp − rowsum(dp ∘ p)) (…, Tq, Tk) is
    the gradient of the scores after scaling, so also of the bias (before unbroadcasting)."""
    p = attention_probs(q, k, mask, scale, bias)
    dv = p.swapaxes(-1, -2) @ g
    dp = g @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    return (ds @ k) * scale, (ds.swapaxes(-1, -2) @ q) * scale, dv, ds


class Attention(Function):
    """scaled_dot_product_attention(q, k, v[, bias]): q (…, Tq, d), k and v (…, Tk, d) -> (…, Tq, d);
    the batch dims broadcast (grouped-query attention: q (B, Hkv, G, Tq, d), k, v (B, Hkv, 1, Tk, d)).

    ``bias``: an optional fourth input, float, broadcastable to (…, Tq, Tk), added to the scaled
    scores (PyTorch's float attn_mask); it gets a gradient like q, k and v.
    ``mask``: None or bool broadcastable to (…, Tq, Tk), True = may attend (is_causal folded in below).
    ``key_mask``: the same information as (B, Tk) when the mask is a pure key-padding mask and
    q is (B, H, Tq, d), so the variants can take it. The reference keeps p (…, Tq, Tk).
    """

    def forward(self, q, k, v, bias=None, mask=None, scale=None, is_causal=False, key_mask=None):
        self.scale, self.mask, self.is_causal, self.key_mask = scale, mask, is_causal, key_mask
        o, self.p = attention_reference(q, k, v, self._full_mask(xp_of(q), q, k), scale, bias)
        return o

    @staticmethod
    def autocast_half_storage(inputs, kwargs, half) -> bool:
        """Under autocast (ops/autocast.py): True when the kernel variant would run these inputs
        cast to the half type ``half``, so they are handed to it as half arrays (attention version
        2: half operands on tensor cores, float32 accumulation, P rounded to the half type for the
        PV product as FlashAttention does) instead of float32 arrays holding half values."""
        if len(inputs) != 3:
            return False
        q, k, v = (t.data for t in inputs)
        return q.dtype == k.dtype == v.dtype and _kernel_fits(q, k, v, as_dtype(half), None, kwargs.get("mask"),
                                                              kwargs.get("key_mask"))

    def _full_mask(self, xp, q, k):
        m = self.mask
        if self.is_causal:
            c = causal_mask(xp, q.shape[-2], k.shape[-2])
            m = c if m is None else (m & c)
        return m

    def backward(self, g):
        q, k, v = self.inputs[:3]
        bias = self.inputs[3] if len(self.inputs) > 3 else None
        dq, dk, dv, ds = attention_vjp_ds(q, k, v, g, self._full_mask(xp_of(q.data), q.data, k.data), self.scale,
                                          bias)
        grads = (unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape))
        return grads if bias is None else grads + (unbroadcast(ds, bias.shape) if bias.requires_grad else None,)

    def backward_arrays(self, g):
        q, k, v = (t.data for t in self.inputs[:3])
        self.dbias = None
        grads = attention_grads(q, k, v, self.p, g, self._ds_)
        out = tuple(sum_to_array(d, t.shape) for d, t in zip(grads, self.inputs))
        if len(self.inputs) > 3:
            out += (None if self.dbias is None else sum_to_array(self.dbias, self.inputs[3].shape),)
        return out

    def _ds_(self, ds, p):
        if len(self.inputs) > 3 and self.inputs[3].requires_grad:    # keep ds before scaling: the bias's
            softmax_ds_(ds, p, 1.0)
            self.dbias = ds.copy()
            ds *= self.scale
        else:
            softmax_ds_(ds, p, self.scale)


def attention_grads(q, k, v, p, g, ds_):
    """(dq, dk, dv) on arrays from the saved probabilities p (…, Tq, Tk) and g (…, Tq, dv):
    dv = pᵀ g; ds = p ∘ (g vᵀ - rowsum(g vᵀ ∘ p)) · scale, by ``ds_`` in place; dq = ds k; dk = dsᵀ q."""
    dv = p.swapaxes(-1, -2) @ g
    ds = g @ v.swapaxes(-1, -2)                               # dp, turned into ds in place
    ds_(ds, p)
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def softmax_ds_(ds, p, scale):
    """In place: ds (…, Tk) <- p ∘ (ds − rowsum(ds ∘ p)) · scale."""
    rows = (ds * p).sum(axis=-1, keepdims=True)
    ds -= rows
    ds *= p
    ds *= scale


@Attention.variant("kernel")
class AttentionKernel(Attention):
    """The fused CUDA kernels: q, k, v (B, H, T, d), causal and/or a (B, Tk) key mask; float32/float64
    by kernels/attention.cu (16 <= d <= 128), float16/bfloat16 by kernels/attention_v2.cu (d <= 128,
    lse float32); no (Tq, Tk) array is stored, only o and the row log-sum-exps."""

    @staticmethod
    def takes(q, k, v, bias=None, mask=None, scale=None, is_causal=False, key_mask=None):
        return q.dtype == k.dtype == v.dtype and _kernel_fits(q, k, v, q.dtype, bias, mask, key_mask)

    def forward(self, q, k, v, bias=None, mask=None, scale=None, is_causal=False, key_mask=None):
        xp = xp_of(q)
        self.scale, self.is_causal, self.key_mask = scale, is_causal, key_mask
        self.o, self.lse = dispatch.launchers().attention_forward(
            xp.ascontiguousarray(q), xp.ascontiguousarray(k), xp.ascontiguousarray(v),
            key_mask=key_mask, is_causal=is_causal, scale=scale)
        self.mask = mask
        return self.o

    def backward_arrays(self, g):
        xp = xp_of(g)
        q, k, v = (xp.ascontiguousarray(t.data) for t in self.inputs)
        return dispatch.launchers().attention_backward(
            q, k, v, self.o, self.lse, xp.ascontiguousarray(g, dtype=q.dtype),
            key_mask=self.key_mask, is_causal=self.is_causal, scale=self.scale)


@Attention.variant("native")
class AttentionNative(Attention):
    """The scale, causal/key mask and softmax fused into one native pass over the scores, and the
    backward's ds in one more (kernels/cpu/fast_cpu.cpp); the GEMMs stay NumPy's."""

    @staticmethod
    def takes(q, k, v, bias=None, mask=None, scale=None, is_causal=False, key_mask=None):
        if bias is not None:
            return False
        if mask is not None and (key_mask is None or q.ndim != 4 or k.ndim > 4
                                 or key_mask.shape != (q.shape[0], k.shape[-2])):
            return False
        return type(q) is np.ndarray and dispatch.native_dtype(q.dtype, k.dtype)

    def forward(self, q, k, v, bias=None, mask=None, scale=None, is_causal=False, key_mask=None):
        self.scale, self.mask, self.is_causal, self.key_mask = scale, mask, is_causal, key_mask
        s = q @ k.swapaxes(-1, -2)                            # (…, Tq, Tk), softmaxed in place
        self.p = dispatch.cpu_native(s).softmax_(s, scale, causal=is_causal, key_mask=key_mask)
        return s @ v

    def _ds_(self, ds, p):
        lib = dispatch.cpu_native(ds, p) if ds.shape == p.shape else None
        if lib is None:
            return super()._ds_(ds, p)
        lib.attention_ds_(ds, p, self.scale)
