"""Ops that move elements without arithmetic: Pad (constant, reflect, replicate, circular) and Roll."""
from __future__ import annotations

from ..autograd import Function
from ._util import xp_of

PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_source(xp, n, lo, hi, mode):
    """For one axis of size n padded by (lo, hi): the source index of each of the n + lo + hi outputs."""
    j = xp.arange(-lo, n + hi)
    if mode == "replicate":
        return xp.clip(j, 0, n - 1)
    if mode == "circular":
        return j % n
    # reflect about the edge elements (not repeating them): period 2(n - 1)
    period = 2 * (n - 1) if n > 1 else 1
    j = j % period
    return xp.where(j < n, j, period - j)


class Pad(Function):
    """x padded by ``pads`` ((lo, hi) per axis, all >= 0). constant: the new elements are ``value``;
    reflect / replicate / circular: each output element is a copy of one input element (per axis an
    index map), so the gradient sums the copies back, axis by axis, through IndexAdd (np.add.at:
    a fixed order)."""

    def forward(self, x, pads, mode="constant", value=0.0):
        xp = xp_of(x)
        self.pads, self.mode, self.shape = pads, mode, x.shape
        if mode == "constant":
            out = xp.full(tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, pads)), value, dtype=x.dtype)
            out[self._inner()] = x
            return out
        self.maps = {}
        for axis, (lo, hi) in enumerate(pads):
            if lo or hi:
                self.maps[axis] = pad_source(xp, x.shape[axis], lo, hi, mode)
                x = xp.take(x, self.maps[axis], axis=axis)
        return x

    def _inner(self):
        return tuple(slice(lo, lo + n) for n, (lo, _) in zip(self.shape, self.pads))

    def backward(self, g):
        from .shape import IndexAdd
        if self.mode == "constant":
            return (g[self._inner()],)
        for axis in sorted(self.maps, reverse=True):
            shape = g.shape[:axis] + (self.shape[axis],) + g.shape[axis + 1:]
            g = IndexAdd.apply(g, shape=shape, idx=(slice(None),) * axis + (self.maps[axis],))
        return (g,)


class Roll(Function):
    """numpy.roll: elements shifted along ``axis`` (None: the flattened array), wrapping around."""

    def forward(self, x, shift, axis=None):
        self.shift, self.axis = shift, axis
        return xp_of(x).roll(x, shift, axis=axis)

    def backward(self, g):
        neg = tuple(-s for s in self.shift) if isinstance(self.shift, tuple) else -self.shift
        return (Roll.apply(g, shift=neg, axis=self.axis),)
