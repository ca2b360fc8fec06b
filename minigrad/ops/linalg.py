"""Matrix multiplication (NumPy's 1-D, 2-D and batched-broadcast rules) and the affine map Linear."""
from __future__ import annotations

from ..autograd import Function
from ._util import unbroadcast


class MatMul(Function):
    def forward(self, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must have at least 1 dimension, got shapes {a.shape} and {b.shape}")
        if a.dtype != b.dtype:
            raise TypeError(f"matmul: dtype mismatch, {a.dtype} @ {b.dtype}; cast one side with .astype()")
        ka = a.shape[-1]
        kb = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align ({ka} != {kb})")
        try:
            y = a @ b
        except ValueError:
            raise ValueError(f"matmul: batch dimensions of {a.shape} and {b.shape} do not broadcast") from None
        return y if y.dtype == a.dtype else y.astype(a.dtype)   # NumPy's bfloat16 matmul returns float32

    def backward(self, g):
        a, b = self.inputs
        if a.ndim == 1 and b.ndim == 1:          # dot product: g is a scalar
            return (g * b if a.requires_grad else None, g * a if b.requires_grad else None)
        # promote 1-D operands to matrices, as numpy does, then undo it on the grads
        a2 = a.reshape((1, a.shape[0])) if a.ndim == 1 else a
        b2 = b.reshape((b.shape[0], 1)) if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = g2.expand_dims(-2)
        if b.ndim == 1:
            g2 = g2.expand_dims(-1)
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape)
            ga = ga.reshape(a.shape) if a.ndim == 1 else ga
        if b.requires_grad:
            gb = unbroadcast(a2.swapaxes(-1, -2) @ g2, b2.shape)
            gb = gb.reshape(b.shape) if b.ndim == 1 else gb
        return ga, gb


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
        if y.dtype != x.dtype:                                # NumPy's bfloat16 matmul returns float32
            y = y.astype(x.dtype)
        return y.reshape(x.shape[:-1] + (w.shape[0],)) if x.ndim > 2 else y

    def backward(self, g):
        x, w = self.inputs[0], self.inputs[1]
        n_out, n_in = w.shape
        g2 = g.reshape((-1, n_out))                                   # (N, out)
        gx = (g2 @ w).reshape(x.shape) if x.requires_grad else None   # (…, in)
        gw = g2.swapaxes(0, 1) @ x.reshape((-1, n_in)) if w.requires_grad else None   # (out, in)
        if len(self.inputs) == 2:
            return gx, gw
        return gx, gw, (g2.sum(axis=0) if self.inputs[2].requires_grad else None)

    def backward_arrays(self, g):
        """The same two GEMMs (and the bias row sum) on arrays."""
        x, w = self.inputs[0], self.inputs[1]
        n_out, n_in = w.shape
        g2 = g.reshape(-1, n_out)
        out = ((g2 @ w.data).astype(x.dtype, copy=False).reshape(x.shape) if x.requires_grad else None,
               (g2.T @ x.data.reshape(-1, n_in)).astype(w.dtype, copy=False) if w.requires_grad else None)
        if len(self.inputs) == 2:
            return out
        return out + ((g2.sum(axis=0) if self.inputs[2].requires_grad else None),)
