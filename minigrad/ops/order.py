"""Order along one axis (already normalised: a non-negative int): argsort, argmax, argmin (index
results, no gradient), and the gather that makes sort and topk values differentiable.

sort(x) is TakeAlong(x, argsort(x)) and topk(x, k) is TakeAlong(x, the first k of that order):
the indices along the axis are distinct, so the backward (PutAlong) puts each gradient element
at its own place: no two land on one element, nothing accumulates, the result is deterministic.
TakeAlong and PutAlong are each other's adjoint, so second derivatives hold.
"""
from __future__ import annotations

from ..autograd import Function
from ._util import xp_of


def _is_cupy(xp):
    return xp.__name__.startswith("cupy")


def argsort_array(a, axis, descending=False):
    """A stable argsort along ``axis``. Descending keeps equal elements in their original order and
    puts NaN first (PyTorch's order): the ascending stable order of the reversed axis, reversed."""
    xp = xp_of(a)
    kw = {} if _is_cupy(xp) else {"kind": "stable"}     # CuPy's sort is stable (radix) and takes no kind
    if not descending:
        return xp.argsort(a, axis=axis, **kw)
    lead = (slice(None),) * axis + (slice(None, None, -1),)
    n = a.shape[axis]
    return xp.ascontiguousarray((n - 1 - xp.argsort(a[lead], axis=axis, **kw))[lead])


def _along(idx, axis, xp):
    """The index tuple that addresses out[..., idx, ...] elementwise (idx along ``axis``)."""
    nd = idx.ndim
    return tuple(idx if d == axis else xp.arange(s).reshape([-1 if k == d else 1 for k in range(nd)])
                 for d, s in enumerate(idx.shape))


class TakeAlong(Function):
    """take_along_axis(x, idx, axis) for indices distinct along the axis (a sort order, its first k)."""

    def forward(self, a, idx, axis):
        self.idx, self.axis, self.n = idx, axis, a.shape[axis]
        return xp_of(a).take_along_axis(a, idx, axis=axis)

    def backward(self, g):
        return (PutAlong.apply(g, idx=self.idx, axis=self.axis, n=self.n),)


class PutAlong(Function):
    """Zeros with ``n`` elements along the axis, x put at the distinct indices ``idx``: TakeAlong's adjoint."""

    def forward(self, a, idx, axis, n):
        xp = xp_of(a)
        self.idx, self.axis = idx, axis
        shape = list(a.shape)
        shape[axis] = n
        out = xp.zeros(tuple(shape), dtype=a.dtype)
        out[_along(idx, axis, xp)] = a
        return out

    def backward(self, g):
        return (TakeAlong.apply(g, idx=self.idx, axis=self.axis),)


class ArgSort(Function):
    """Indices (int64) that sort along the axis, stable; no gradient."""
    differentiable = False

    def forward(self, a, axis, descending=False):
        return argsort_array(a, axis, descending)


class ArgMax(Function):
    """Index of the first maximum along ``axis`` (None: of the flattened tensor); NaN counts as the
    maximum, as in NumPy and PyTorch. No gradient."""
    differentiable = False

    def forward(self, a, axis=None, keepdims=False):
        return xp_of(a).argmax(a, axis=axis, keepdims=keepdims)


class ArgMin(Function):
    """Index of the first minimum along ``axis`` (None: of the flattened tensor); NaN counts as the
    minimum. No gradient."""
    differentiable = False

    def forward(self, a, axis=None, keepdims=False):
        return xp_of(a).argmin(a, axis=axis, keepdims=keepdims)


__all__ = ["ArgMax", "ArgMin", "ArgSort", "PutAlong", "TakeAlong", "argsort_array"]
