"""Scatter: x with src written at an index. (gather, take_along_axis, index_select and scatter_add
are GetItem and IndexAdd with an index built by minigrad.manipulation; only the overwrite needs an op.)"""
from __future__ import annotations

from ..autograd import Function
from .elementwise import Where
from ._util import xp_of


def last_writers(xp, flat, n):
    """For flat target indices (M,) into an array of n elements: a bool (M,) marking, for each distinct
    target, the last of the sources writing it (in source order). Decided by one sort of the unique
    keys flat·M + position, so the answer does not depend on how a device orders parallel writes."""
    m = flat.size
    order = xp.argsort(flat * m + xp.arange(m))
    ordered = flat[order]
    last = xp.ones(m, dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    keep = xp.zeros(m, dtype=bool)
    keep[order[last]] = True
    return keep


class Scatter(Function):
    """out = x with out[idx] = src, idx a tuple of integer arrays broadcasting to src's shape (an
    advanced index into x). Where several sources name one target, the last one (in src's C order)
    is written and the others get no gradient. dx is g off the written targets; dsrc is g at them."""

    def forward(self, x, src, idx):
        xp = xp_of(x)
        flat = xp.ravel_multi_index(tuple(xp.broadcast_to(i, src.shape) for i in idx), x.shape).reshape(-1)
        self.keep = last_writers(xp, flat, x.size)
        self.flat, self.src_shape = flat, src.shape
        out = x.copy()
        out.reshape(-1)[flat[self.keep]] = src.reshape(-1)[self.keep]
        self.written = xp.zeros(x.size, dtype=bool)
        self.written[flat] = True
        self.written = self.written.reshape(x.shape)
        return out

    def backward(self, g):
        from ..tensor import Tensor
        x, src = self.inputs
        zero = Tensor._make(g._xp.zeros((), dtype=g.dtype))
        dx = Where.apply(zero, g, cond=self.written) if x.requires_grad else None
        dsrc = None
        if src.requires_grad:
            picked = g.reshape(-1)[self.flat]
            dsrc = Where.apply(picked, zero, cond=self.keep).reshape(self.src_shape)
        return dx, dsrc
