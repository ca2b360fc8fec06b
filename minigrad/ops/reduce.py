"""Reductions over a tuple of axes (already normalised by Tensor: sorted, non-negative)."""
from __future__ import annotations

from ..autograd import Function
from ._util import xp_of


def _keep_shape(shape, axis):
    """The shape of the reduction with keepdims=True."""
    return tuple(1 if i in axis else s for i, s in enumerate(shape))


class Sum(Function):
    def forward(self, a, axis, keepdims=False):
        self.shape, self.axis = a.shape, axis
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        return (g.reshape(_keep_shape(self.shape, self.axis)).broadcast_to(self.shape),)


class Mean(Function):
    def forward(self, a, axis, keepdims=False):
        self.shape, self.axis = a.shape, axis
        n = 1
        for i in axis:
            n *= a.shape[i]
        self.n = n
        return a.mean(axis=axis, keepdims=keepdims) if n else xp_of(a).zeros(
            _keep_shape(a.shape, axis) if keepdims else tuple(s for i, s in enumerate(a.shape) if i not in axis),
            a.dtype) * float("nan")

    def backward(self, g):
        return ((g * (1.0 / max(self.n, 1))).reshape(_keep_shape(self.shape, self.axis)).broadcast_to(self.shape),)


class Max(Function):
    """max over axes; tied maxima share the gradient evenly (as numpy's amax subgradient in PyTorch)."""

    def forward(self, a, axis, keepdims=False):
        if any(a.shape[i] == 0 for i in axis):   # numpy also refuses; other zero-size dims are fine
            raise ValueError(f"max: reducing a zero-size axis of shape {a.shape} (axes {axis}) has no maximum")
        m = a.max(axis=axis, keepdims=True)
        hit = (a == m)
        self.w = hit / hit.sum(axis=axis, keepdims=True)
        self.shape, self.axis = a.shape, axis
        return m if keepdims else m.reshape(tuple(s for i, s in enumerate(a.shape) if i not in axis))

    def backward(self, g):
        from ..tensor import Tensor
        w = Tensor._make(self.w.astype(g.dtype, copy=False))
        return (g.reshape(_keep_shape(self.shape, self.axis)) * w,)
