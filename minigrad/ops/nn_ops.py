"""Neural-network ops with hand-derived backward: activations, the softmax family, losses,
layer_norm, scaled-dot-product attention, and two fused CPU ops the GPT is built from (the GELU
MLP and self-attention on a packed q|k|v projection).

Each backward is a Tensor expression over ``saved(...)`` values: constants in a first-order
backward, recomputed differentiably under create_graph, so second derivatives hold.
layer_norm and attention ask ``minigrad.fused`` whether to run the CUDA kernels instead.
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function, is_grad_enabled
from ..backend import device_of
from .. import fused
from ._util import saved, unbroadcast, xp_of
from .shape import sum_to_array
from .special import erf, gelu_and_slope

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


# ---------------------------------------------------------------- activations
def _normal_cdf_pdf(x):
    """(Φ(x), φ(x)) of the standard normal as Tensor expressions: GELU's pieces under create_graph."""
    return 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0)))), (x * x * -0.5).exp() * _INV_SQRT_2PI


class Gelu(Function):
    """x Φ(x) (approximate="none") or the tanh approximation (approximate="tanh")."""

    def forward(self, x, approximate="none"):
        xp = xp_of(x)
        self.approximate = approximate
        if approximate == "tanh":
            u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
            self.t = xp.tanh(u)
            return 0.5 * x * (1.0 + self.t)
        lib = fused.cpu_native(x)
        if lib is not None:
            y, self.slope = lib.gelu(x)
        else:
            y, self.slope = gelu_and_slope(x)  # the slope dy/dx is computed with y, nearly for free
        return y

    def backward(self, g):
        x = self.inputs[0]
        if self.approximate == "tanh":
            t = saved(self.t, lambda: (_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)
        if not is_grad_enabled():    # storing the slope beats recomputing it here (measured)
            return (_T(g.data * self.slope),)
        cdf, pdf = _normal_cdf_pdf(x)                             # differentiable, for create_graph
        return (g * (cdf + x * pdf),)


class Linear(Function):
    """y = x Wᵀ + b: x (…, in), W (out, in), b (out,).

    One op rather than matmul + transpose + add, so the weight gradient gᵀx comes out as a
    contiguous (out, in) array and no transposed view has to be copied into W.grad."""

    def forward(self, x, w, b=None):
        if x.dtype != w.dtype:
            raise TypeError(f"linear: dtype mismatch, input {x.dtype} and weight {w.dtype}")
        # fold leading dims into rows: one GEMM (a batched (B, T, in) @ (in, out) is several times slower)
        y = x.reshape(-1, x.shape[-1]) @ w.T if x.ndim > 2 else x @ w.T
        if b is not None:
            y += b
        return y.reshape(x.shape[:-1] + (w.shape[0],)) if x.ndim > 2 else y

    def backward(self, g):
        x, w = self.inputs[0], self.inputs[1]
        n_out, n_in = w.shape
        if not is_grad_enabled():     # first order: the two GEMMs on arrays, no Tensor ops to dispatch
            g2 = g.data.reshape(-1, n_out)
            out = (_T((g2 @ w.data).reshape(x.shape)) if x.requires_grad else None,
                   _T(g2.T @ x.data.reshape(-1, n_in)) if w.requires_grad else None)
            if len(self.inputs) == 2:
                return out
            return out + ((_T(g2.sum(axis=0)) if self.inputs[2].requires_grad else None),)
        g2 = g.reshape((-1, n_out))                                # (N, out)
        gx = (g2 @ w).reshape(x.shape) if x.requires_grad else None   # (…, in)
        gw = g2.swapaxes(0, 1) @ x.reshape((-1, n_in)) if w.requires_grad else None   # (out, in)
        if len(self.inputs) == 2:
            return gx, gw
        return gx, gw, (g2.sum(axis=0) if self.inputs[2].requires_grad else None)


class GeluMLP(Function):
    """y = gelu(x W1ᵀ + b1) W2ᵀ + b2 with the exact GELU: a transformer's MLP as one op.

    x (N, C), W1 (H, C), W2 (C2, H), b1 (H,) and b2 (C2,) optional (flags has_b1, has_b2) ->
    y (N, C2). The hidden activation is computed in place (GELU overwrites the first GEMM's output)
    and the backward scales the second GEMM's dx by the GELU slope in place, so neither pass makes
    a second (N, H) array: each fresh array costs a cache-cold write. Keeps a = gelu(h) and the
    slope, both (N, H). Built by F.gelu_mlp, on the CPU, when the native library takes the arrays.
    """

    def forward(self, x, w1, w2, *biases, has_b1=False, has_b2=False):
        self.has_b1, self.has_b2 = has_b1, has_b2
        b1 = biases[0] if has_b1 else None
        b2 = biases[-1] if has_b2 else None
        h = x @ w1.T                                          # (N, H)
        if b1 is not None:
            h += b1
        _, self.slope = fused.cpu_native(h).gelu(h, out=h)    # h becomes a = gelu(h)
        self.a = h
        y = h @ w2.T                                          # (N, C2)
        if b2 is not None:
            y += b2
        return y

    def backward(self, g):
        x, w1, w2 = self.inputs[:3]
        b1 = self.inputs[3] if self.has_b1 else None
        b2 = self.inputs[-1] if self.has_b2 else None
        if not is_grad_enabled():
            g2 = g.data
            da = g2 @ w2.data                                 # (N, H)
            dw2 = g2.T @ self.a if w2.requires_grad else None
            db2 = g2.sum(axis=0) if b2 is not None and b2.requires_grad else None
            da *= self.slope                                  # dh, in place
            dx = da @ w1.data if x.requires_grad else None
            dw1 = da.T @ x.data if w1.requires_grad else None
            db1 = da.sum(axis=0) if b1 is not None and b1.requires_grad else None
            grads = [dx, dw1, dw2] + ([db1] if self.has_b1 else []) + ([db2] if self.has_b2 else [])
            return tuple(None if d is None else _T(d) for d in grads)
        # create_graph: the same formulas in Tensor ops, h and the slope recomputed from x
        h = Linear.apply(x, w1, b1) if b1 is not None else Linear.apply(x, w1)
        cdf, pdf = _normal_cdf_pdf(h)
        a = h * cdf
        slope = cdf + h * pdf
        dh = (g @ w2) * slope
        grads = [dh @ w1, dh.swapaxes(0, 1) @ x, g.swapaxes(0, 1) @ a]
        if self.has_b1:
            grads.append(dh.sum(axis=0))
        if self.has_b2:
            grads.append(g.sum(axis=0))
        return tuple(grads)


# ---------------------------------------------------------------- softmax family
def _lse(x, axis):
    """logsumexp over ``axis`` with keepdims, max-subtracted; rows of all -inf give -inf."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype, copy=False)
    with np.errstate(divide="ignore"):
        return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def forward(self, x, axis=-1):
        xp = xp_of(x)
        self.axis = axis
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        y = saved(self.y, lambda: Softmax.apply(self.inputs[0], axis=self.axis))
        gy = g * y
        return (gy - y * gy.sum(axis=self.axis, keepdims=True),)


class LogSoftmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = x - _lse(x, axis)
        return self.y

    def backward(self, g):
        p = saved(xp_of(self.y).exp(self.y) if not is_grad_enabled() else None,
                  lambda: Softmax.apply(self.inputs[0], axis=self.axis))
        return (g - p * g.sum(axis=self.axis, keepdims=True),)


class LogSumExp(Function):
    def forward(self, x, axis, keepdims=False):
        self.axis, self.keepdims = axis, keepdims
        out = _lse(x, axis)
        self.p = xp_of(x).exp(x - out)
        return out if keepdims else out.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axis))

    def backward(self, g):
        x = self.inputs[0]
        p = saved(self.p, lambda: Softmax.apply(x, axis=self.axis) if len(self.axis) == 1
                  else (x - LogSumExp.apply(x, axis=self.axis, keepdims=True)).exp())
        if not self.keepdims:
            g = g.reshape(tuple(1 if i in self.axis else s for i, s in enumerate(x.shape)))
        return (g * p,)


class CrossEntropy(Function):
    """Mean (or sum, or per-row) of -log softmax(logits)[target] over rows whose target != ignore_index.

    logits (N, C) float, target (N,) int. Stable: computed from logsumexp.
    """

    def forward(self, logits, target, ignore_index=-100, reduction="mean"):
        xp = xp_of(logits)
        c = logits.shape[1]
        valid = target != ignore_index
        safe_t = xp.where(valid, target, 0)
        if bool(((safe_t < 0) | (safe_t >= c)).any()):
            bad = int(safe_t[(safe_t < 0) | (safe_t >= c)][0])
            raise IndexError(f"cross_entropy: target {bad} is out of range for {c} classes")
        self.valid, self.safe_t, self.reduction = valid, safe_t, reduction
        n_valid = int(valid.sum())
        # a mean over no rows is NaN, as in PyTorch (every target == ignore_index)
        self.scale = (1.0 / n_valid if n_valid else float("nan")) if reduction == "mean" else 1.0
        lib = fused.cpu_native(logits)
        res = lib.cross_entropy(logits, target, ignore_index) if lib is not None else None
        if res is not None:                # one native pass: each row's nll and its gradient softmax − onehot
            nll, self.d = res
            self.p = None                  # recomputed if a create_graph backward needs it
        else:
            (nll, self.p), self.d = self._nll(logits, safe_t, valid), None
        if reduction == "none":
            return nll
        out = nll.sum()
        return out * self.scale if reduction == "mean" else out

    @staticmethod
    def _nll(logits, safe_t, valid):
        """(per-row nll, softmax(logits)) on arrays."""
        xp = xp_of(logits)
        m = logits.max(axis=1, keepdims=True)
        if bool(xp.isfinite(m).all()):     # one exp pass gives both the softmax and its logsumexp
            e = xp.exp(logits - m)
            den = e.sum(axis=1, keepdims=True)
            e /= den
            p, lse = e, (m + xp.log(den))[:, 0]
        else:                              # rows of all -inf (or inf, NaN): the careful path
            lse = _lse(logits, 1)[:, 0]
            p = xp.exp(logits - lse[:, None])
        return (lse - logits[xp.arange(logits.shape[0]), safe_t]) * valid, p

    def backward(self, g):
        logits = self.inputs[0]
        xp = xp_of(logits.data)
        if not is_grad_enabled():         # first order: (p - onehot) · w on one array
            w = (self.valid * self.scale).astype(logits.dtype)[:, None]
            w = w * (g.data.reshape(-1, 1) if self.reduction == "none" else g.data)
            if self.d is not None:
                return (_T(self.d * w),)
            d = self.p.copy()
            d[xp.arange(d.shape[0]), self.safe_t] -= 1
            d *= w
            return (_T(d),)
        p = saved(self.p, lambda: Softmax.apply(logits, axis=1))
        onehot = xp.zeros(logits.shape, dtype=logits.dtype)
        onehot[xp.arange(logits.shape[0]), self.safe_t] = 1
        w = _T((self.valid * self.scale).astype(logits.dtype)[:, None])
        if self.reduction == "none":
            w = w * g.reshape((-1, 1))
        else:
            w = w * g
        return ((p - _T(onehot)) * w,)


# ---------------------------------------------------------------- layer norm
class LayerNorm(Function):
    """y = (x - mean) * rstd * weight + bias over the last dimension (x reshaped to rows (N, C))."""

    def forward(self, x, weight=None, bias=None, eps=1e-5):
        xp = xp_of(x)
        self.eps, self.has_w, self.has_b = eps, weight is not None, bias is not None
        shape, c = x.shape, x.shape[-1]
        self.kernel = fused.use_kernels(device_of(x))
        x2 = x.reshape(-1, c)
        if self.kernel:
            y, self.mean, self.rstd = fused.launchers().layernorm_forward(
                xp.ascontiguousarray(x2), weight, bias, eps)
            return y.reshape(shape)
        lib = fused.cpu_native(x2, weight, bias)
        if lib is not None:       # keeps mean and rstd; the native backward recomputes xhat from x
            y, self.mean, self.rstd = lib.layernorm_forward(x2, weight, bias, eps)
            self.xhat = None
            return y.reshape(shape)
        mean = x2.mean(axis=1, keepdims=True)
        xhat = x2 - mean                                       # (N, C), normalised in place below
        var = xp.einsum("ij,ij->i", xhat, xhat)[:, None] * (1.0 / c)
        rstd = 1.0 / xp.sqrt(var + eps)                        # (N, 1)
        xhat *= rstd
        self.xhat, self.rstd = xhat, rstd
        y = xhat * weight if weight is not None else xhat.copy()
        if bias is not None:
            y += bias
        return y.reshape(shape)

    def backward(self, g):
        x, w = self.inputs[0], (self.inputs[1] if self.has_w else None)
        c = x.shape[-1]
        if self.kernel and not is_grad_enabled():
            xp = xp_of(g.data)
            dx, dw, db = fused.launchers().layernorm_backward(
                xp.ascontiguousarray(g.data.reshape(-1, c)), xp.ascontiguousarray(x.data.reshape(-1, c)),
                w.data if w is not None else None, self.mean, self.rstd, bias=self.has_b)
            out = [_T(dx.reshape(x.shape))]
            if self.has_w:
                out.append(_T(dw))
            if self.has_b:
                out.append(_T(db))           # the launcher computes dbias whenever bias=True
            return tuple(out)
        if not is_grad_enabled():
            return self._backward_arrays(g.data.reshape(-1, c), w)
        # create_graph: the same formula in Tensor ops, with xhat and rstd recomputed from x
        g2 = g.reshape((-1, c))
        x2 = x.reshape((-1, c))
        xc = x2 - x2.mean(axis=1, keepdims=True)
        rstd = ((xc * xc).mean(axis=1, keepdims=True) + self.eps) ** -0.5
        xhat = xc * rstd
        gx = g2 * w if w is not None else g2
        dx = rstd * (gx - gx.mean(axis=1, keepdims=True) - xhat * (gx * xhat).mean(axis=1, keepdims=True))
        out = [dx.reshape(x.shape)]
        if self.has_w:
            out.append((g2 * xhat).sum(axis=0) if w.requires_grad else None)
        if self.has_b:
            out.append(g2.sum(axis=0) if self.inputs[-1].requires_grad else None)
        return tuple(out)

    def _backward_arrays(self, g2, w):
        """dx = rstd (gx - mean(gx) - xhat mean(gx xhat)), gx = g w; dw = Σ g xhat; db = Σ g (rows)."""
        xp = xp_of(g2)
        x = self.inputs[0]
        xhat, rstd, c = self.xhat, self.rstd, g2.shape[1]
        x2 = x.data.reshape(-1, c)
        lib = fused.cpu_native(g2, x2, self.mean, rstd, w.data if w is not None else None) if xhat is None else None
        if xhat is None and lib is None:   # the native forward ran, but the library is now off
            xhat = (x2 - self.mean) * rstd
        if lib is not None:
            need_dw = self.has_w and w.requires_grad
            need_db = self.has_b and self.inputs[-1].requires_grad
            dx, dw, db = lib.layernorm_backward(g2, x2, self.mean, rstd, w.data if w is not None else None,
                                                need_dw, need_db)
            out = [_T(dx.reshape(x.shape))]
            if self.has_w:
                out.append(_T(dw) if need_dw else None)
            if self.has_b:
                out.append(_T(db) if need_db else None)
            return tuple(out)
        gx = g2 * w.data if w is not None else g2.copy()
        m2 = xp.einsum("ij,ij->i", gx, xhat)[:, None] * (1.0 / c)
        gx -= gx.mean(axis=1, keepdims=True)
        gx -= xhat * m2
        gx *= rstd
        out = [_T(gx.reshape(x.shape))]
        if self.has_w:
            out.append(_T(xp.einsum("ij,ij->j", g2, xhat)) if w.requires_grad else None)
        if self.has_b:
            out.append(_T(g2.sum(axis=0)) if self.inputs[-1].requires_grad else None)
        return tuple(out)


# ---------------------------------------------------------------- attention
def attention_reference(q, k, v, mask, scale):
    """softmax(q kᵀ scale, masked) v on arrays. mask: bool (…, Tq, Tk), True = may attend, or None.
    A query row with no attendable key gets a zero output row. Returns (o, p), p (…, Tq, Tk)."""
    xp = xp_of(q)
    s = q @ k.swapaxes(-1, -2)                                # (…, Tq, Tk), scaled and softmaxed in place
    s *= scale
    if mask is not None:
        s += xp.where(mask, 0.0, -xp.inf).astype(s.dtype)      # an additive bias: one broadcast pass
    m = s.max(axis=-1, keepdims=True)
    if mask is not None:
        m = xp.where(xp.isfinite(m), m, 0).astype(s.dtype, copy=False)
    s -= m
    xp.exp(s, out=s)
    den = s.sum(axis=-1, keepdims=True)
    if mask is not None:
        den[den == 0] = 1
    s /= den
    return s @ v, s


def causal_mask(xp, tq, tk):
    """(Tq, Tk) bool, bottom-right aligned: query i sees key j iff j <= i + (Tk - Tq)."""
    return xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)


class Attention(Function):
    """scaled_dot_product_attention(q, k, v): q (…, Tq, d), k and v (…, Tk, d) -> (…, Tq, d).

    ``mask``: None or bool broadcastable to (…, Tq, Tk), True = may attend (is_causal already folded in).
    ``key_mask``: the same information as (B, Tk) when the mask is a pure key-padding mask and
    q is (B, H, Tq, d), so the fused kernel can take it.
    """

    def forward(self, q, k, v, mask=None, scale=None, is_causal=False, key_mask=None, kernel_ok=False):
        xp = xp_of(q)
        self.scale, self.mask, self.is_causal, self.key_mask = scale, mask, is_causal, key_mask
        self.kernel = kernel_ok and fused.use_kernels(device_of(q))
        if self.kernel:
            self.o, self.lse = fused.launchers().attention_forward(
                xp.ascontiguousarray(q), xp.ascontiguousarray(k), xp.ascontiguousarray(v),
                key_mask=key_mask, is_causal=is_causal, scale=scale)
            return self.o
        if xp is np and (mask is None or key_mask is not None):
            o = self._forward_native(q, k, v)
            if o is not None:
                return o
        full = self._full_mask(xp, q, k)
        o, self.p = attention_reference(q, k, v, full, scale)
        return o

    def _forward_native(self, q, k, v):
        """attention_reference with the scale, causal/key mask and softmax fused into one native pass
        over the scores; None when the native library cannot take these arrays."""
        s = q @ k.swapaxes(-1, -2)                            # (…, Tq, Tk)
        km = self.key_mask
        if km is not None and (s.ndim != 4 or km.shape != (s.shape[0], s.shape[-1])):
            return None
        lib = fused.cpu_native(s)
        if lib is None:
            return None
        self.p = lib.softmax_(s, self.scale, causal=self.is_causal, key_mask=km)
        return s @ v

    def _full_mask(self, xp, q, k):
        m = self.mask
        if self.is_causal:
            c = causal_mask(xp, q.shape[-2], k.shape[-2])
            m = c if m is None else (m & c)
        return m

    def backward(self, g):
        q, k, v = self.inputs
        if self.kernel and not is_grad_enabled():
            xp = xp_of(g.data)
            dq, dk, dv = fused.launchers().attention_backward(
                xp.ascontiguousarray(q.data), xp.ascontiguousarray(k.data), xp.ascontiguousarray(v.data),
                self.o, self.lse, xp.ascontiguousarray(g.data),
                key_mask=self.key_mask, is_causal=self.is_causal, scale=self.scale)
            return _T(dq), _T(dk), _T(dv)
        if not is_grad_enabled():
            return self._backward_arrays(g.data)
        dq, dk, dv = _attention_vjp(q, k, v, g, self._full_mask(xp_of(q.data), q.data, k.data), self.scale)
        return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)

    def _backward_arrays(self, g):
        """dv = pᵀ g; ds = p ∘ (g vᵀ - rowsum(g vᵀ ∘ p)); dq = ds k · scale; dk = dsᵀ q · scale."""
        q, k, v = (t.data for t in self.inputs)
        p = self.p
        dv = p.swapaxes(-1, -2) @ g
        ds = g @ v.swapaxes(-1, -2)                           # dp, turned into ds in place
        lib = fused.cpu_native(ds, p) if ds.shape == p.shape else None
        if lib is not None:
            lib.attention_ds_(ds, p, self.scale)
            dq, dk = ds @ k, ds.swapaxes(-1, -2) @ q
            return tuple(_T(sum_to_array(d, t.shape)) for d, t in zip((dq, dk, dv), self.inputs))
        rows = (ds * p).sum(axis=-1, keepdims=True)
        ds -= rows
        ds *= p
        ds *= self.scale
        dq, dk = ds @ k, ds.swapaxes(-1, -2) @ q
        return tuple(_T(sum_to_array(d, t.shape)) for d, t in zip((dq, dk, dv), self.inputs))


def _attention_vjp(q, k, v, g, mask, scale):
    """(dq, dk, dv) of attention at g (…, Tq, dv), in Tensor ops with p recomputed from q and k,
    so the gradient is itself differentiable (create_graph). Shapes before unbroadcasting."""
    p = _attention_probs(q, k, mask, scale)
    dv = p.swapaxes(-1, -2) @ g
    dp = g @ v.swapaxes(-1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    return (ds @ k) * scale, (ds.swapaxes(-1, -2) @ q) * scale, dv


class QKVAttention(Function):
    """Multi-head self-attention on a packed projection, as one native CPU op.

    qkv (B, T, 3C) = [q | k | v] along the last axis; each part is split into n_head heads of
    C // n_head -> y (B, T, C), the heads' attention outputs side by side. The forward and the
    first-order backward run kernels/cpu/attention_cpu.cpp, which reads the heads in place (no
    transposed copies) and keeps only y and the row log-sum-exps (B, n_head, T) between the passes.
    Under create_graph the backward is the same formulas in Tensor ops. Built only by
    F.qkv_self_attention, and only when the native library takes the array.
    """

    def forward(self, qkv, n_head, is_causal, scale):
        self.n_head, self.is_causal, self.scale = n_head, is_causal, scale
        self.y, self.lse = fused.cpu_native(qkv).qkv_attention_forward(qkv, n_head, is_causal, scale)
        return self.y

    def backward(self, g):
        qkv = self.inputs[0]
        b, t, c3 = qkv.shape
        nh, hs = self.n_head, c3 // 3 // self.n_head
        if not is_grad_enabled():
            dy = np.ascontiguousarray(g.data, dtype=qkv.dtype)
            return (_T(fused.cpu_native(qkv.data).qkv_attention_backward(
                qkv.data, self.y, self.lse, dy, nh, self.is_causal, self.scale)),)
        from ..functions import stack
        heads = qkv.reshape((b, t, 3, nh, hs)).transpose(2, 0, 3, 1, 4)        # (3, B, nh, T, hs)
        mask = causal_mask(np, t, t) if self.is_causal else None
        gh = g.reshape((b, t, nh, hs)).transpose(0, 2, 1, 3)                    # (B, nh, T, hs)
        d = stack(_attention_vjp(heads[0], heads[1], heads[2], gh, mask, self.scale))
        return (d.transpose(1, 3, 0, 2, 4).reshape((b, t, c3)),)


def _attention_probs(q, k, mask, scale):
    """The attention probabilities as a differentiable Tensor expression (for create_graph)."""
    from ..functions import where
    s = (q @ k.swapaxes(-1, -2)) * scale
    if mask is None:
        return Softmax.apply(s, axis=-1)
    xp = xp_of(q.data)
    mask = xp.broadcast_to(mask, s.shape)
    any_key = mask.any(axis=-1, keepdims=True)
    s = where(mask, s, -1e30)   # finite, so a row with no key stays NaN-free (it is zeroed below)
    p = Softmax.apply(s, axis=-1)
    return p * _T((mask & any_key).astype(s.dtype))
