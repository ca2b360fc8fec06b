"""Layer normalisation over the last dimension, with its native CPU and CUDA-kernel variants."""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import device_of
from ._util import xp_of
from .attention import half_kernels_run_on


class LayerNorm(Function):
    """y = (x - mean) * rstd * weight + bias over the last dimension (x reshaped to rows (N, C)).

    Reference: keeps xhat (N, C) and rstd (N, 1). The variants keep mean and rstd (N, 1) instead
    and recompute xhat from x in their backward. Half-type inputs (float16, bfloat16) are normalised
    in float32 by the reference, each result rounded once to its type (y: the inputs' result type)."""

    def forward(self, x, weight=None, bias=None, eps=1e-5):
        self.eps, self.has_w, self.has_b = eps, weight is not None, bias is not None
        c = x.shape[-1]
        y = self._rows(x.reshape(-1, c), weight, bias, eps)    # (N, C)
        return y.reshape(x.shape)

    def _rows(self, x2, weight, bias, eps):
        if any(_half(a) for a in (x2, weight, bias)):
            wide = [None if a is None else a.astype(np.float32) for a in (x2, weight, bias)]
            return self._rows(*wide, eps).astype(np.result_type(*(a for a in (x2, weight, bias) if a is not None)))
        xp = xp_of(x2)
        c = x2.shape[1]
        mean = x2.mean(axis=1, keepdims=True)
        xhat = x2 - mean                                       # (N, C), normalised in place below
        var = xp.einsum("ij,ij->i", xhat, xhat)[:, None] * (1.0 / c)
        rstd = 1.0 / xp.sqrt(var + eps)                        # (N, 1)
        xhat *= rstd
        self.xhat, self.rstd = xhat, rstd
        y = xhat * weight if weight is not None else xhat.copy()
        if bias is not None:
            y += bias
        return y

    def backward(self, g):
        """dx = rstd (gx - mean(gx) - xhat mean(gx xhat)), gx = g w; dw = Σ g xhat; db = Σ g (rows),
        with xhat and rstd recomputed from x in Tensor ops (so create_graph differentiates them)."""
        x, w = self.inputs[0], (self.inputs[1] if self.has_w else None)
        c = x.shape[-1]
        g2 = g.reshape((-1, c))
        x2 = x.reshape((-1, c))
        xc = x2 - x2.mean(axis=1, keepdims=True)
        rstd = ((xc * xc).mean(axis=1, keepdims=True) + self.eps) ** -0.5
        xhat = xc * rstd
        gx = g2 * w if w is not None else g2
        dx = rstd * (gx - gx.mean(axis=1, keepdims=True) - xhat * (gx * xhat).mean(axis=1, keepdims=True))
        return self._outputs(dx.reshape(x.shape), lambda: (g2 * xhat).sum(axis=0), lambda: g2.sum(axis=0))

    def backward_arrays(self, g):
        """The same formulas on arrays, with the saved xhat and rstd."""
        x, w = self.inputs[0], (self.inputs[1] if self.has_w else None)
        g2 = g.reshape(-1, x.shape[-1])
        if g2.dtype != self.xhat.dtype or (w is not None and w.dtype != self.xhat.dtype):   # half inputs
            grads = self._backward_rows(g2.astype(self.xhat.dtype), self.xhat, self.rstd, w, wide=True)
            return tuple(None if d is None else d.astype(t.dtype) for d, t in zip(grads, self.inputs))
        return self._backward_rows(g2, self.xhat, self.rstd, w)

    def _backward_rows(self, g2, xhat, rstd, w, wide=False):
        xp = xp_of(g2)
        c = g2.shape[1]
        wd = None if w is None else (w.data.astype(g2.dtype) if wide else w.data)
        gx = g2 * wd if w is not None else g2.copy()
        m2 = xp.einsum("ij,ij->i", gx, xhat)[:, None] * (1.0 / c)
        gx -= gx.mean(axis=1, keepdims=True)
        gx -= xhat * m2
        gx *= rstd
        return self._outputs(gx.reshape(self.inputs[0].shape), lambda: xp.einsum("ij,ij->j", g2, xhat),
                             lambda: g2.sum(axis=0))

    def _outputs(self, dx, dweight, dbias):
        """(dx, [dweight], [dbias]) for the inputs this op was called with; a gradient is computed
        only if its input wants one."""
        out = [dx]
        if self.has_w:
            out.append(dweight() if self.inputs[1].requires_grad else None)
        if self.has_b:
            out.append(dbias() if self.inputs[-1].requires_grad else None)
        return tuple(out)


def _half(a) -> bool:
    return a is not None and a.dtype.itemsize == 2 and a.dtype.name in ("float16", "bfloat16")


V2_MAX_WIDTH = 8192    # layernorm_v2.cu keeps a row in registers: rows up to 8192 elements


@LayerNorm.variant("kernel")
class LayerNormKernel(LayerNorm):
    """The CUDA kernels on "cuda", or emulated on the CPU: kernels/layernorm.cu for float32/float64,
    kernels/layernorm_v2.cu for float16/bfloat16 (float32 statistics, rows up to 8192 wide).
    weight and bias (if any) have x's dtype, so y has it, as in the reference."""

    @staticmethod
    def takes(x, weight=None, bias=None, eps=1e-5):
        if any(p is not None and p.dtype != x.dtype for p in (weight, bias)):
            return False
        if not (_half(x) and 0 < x.shape[-1] <= V2_MAX_WIDTH or x.dtype in (np.float32, np.float64)):
            return False
        return dispatch.use_kernels(device_of(x)) and (not _half(x) or half_kernels_run_on(x))

    def _rows(self, x2, weight, bias, eps):
        y, self.mean, self.rstd = dispatch.launchers().layernorm_forward(
            xp_of(x2).ascontiguousarray(x2), weight, bias, eps)
        return y

    def backward_arrays(self, g):
        x, w = self.inputs[0], (self.inputs[1] if self.has_w else None)
        xp, c = xp_of(g), x.shape[-1]
        dx, dw, db = dispatch.launchers().layernorm_backward(
            xp.ascontiguousarray(g.reshape(-1, c), dtype=x.dtype), xp.ascontiguousarray(x.data.reshape(-1, c)),
            w.data if w is not None else None, self.mean, self.rstd, bias=self.has_b)
        return self._outputs(dx.reshape(x.shape), lambda: dw, lambda: db)


@LayerNorm.variant("native")
class LayerNormNative(LayerNorm):
    """The native CPU loops (kernels/cpu/fast_cpu.cpp): one pass each way, xhat never stored."""

    @staticmethod
    def takes(x, weight=None, bias=None, eps=1e-5):
        return dispatch.cpu_native(x, weight, bias) is not None

    def _rows(self, x2, weight, bias, eps):
        y, self.mean, self.rstd = dispatch.cpu_native(x2).layernorm_forward(x2, weight, bias, eps)
        return y

    def backward_arrays(self, g):
        x, w = self.inputs[0], (self.inputs[1] if self.has_w else None)
        c = x.shape[-1]
        g2, x2, wd = g.reshape(-1, c), x.data.reshape(-1, c), (w.data if w is not None else None)
        lib = dispatch.cpu_native(g2, x2, self.mean, self.rstd, wd)
        if lib is None:     # g is not a contiguous array of x's dtype: the reference formula
            return self._backward_rows(g2, (x2 - self.mean) * self.rstd, self.rstd, w)
        need_dw = self.has_w and w.requires_grad
        need_db = self.has_b and self.inputs[-1].requires_grad
        dx, dw, db = lib.layernorm_backward(g2, x2, self.mean, self.rstd, wd, need_dw, need_db)
        return self._outputs(dx.reshape(x.shape), lambda: dw, lambda: db)
