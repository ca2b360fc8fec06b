"""Max and average pooling over the window grid of ops.conv (im2col), any number of spatial dims.

x (N, C, *S) -> (N, C, *L). Both gradients go back through Fold (col2im), whose overlapping
windows add in a fixed order: max pooling routes each window's gradient to the first position
holding its maximum (PyTorch's argmax), average pooling spreads it evenly.
"""
from __future__ import annotations

import math

from ..autograd import Function
from ._util import xp_of
from .conv import Fold, im2col


def _lowest(xp, dtype):
    return -xp.inf if dtype.kind == "f" else xp.iinfo(dtype).min


class MaxPool(Function):
    """Max over each window; padding never wins (it holds -inf). Keeps the argmax (N, C, *L)."""

    def forward(self, x, kernel, stride, dilation, pads):
        xp = xp_of(x)
        self.grid, self.size = (kernel, stride, dilation, pads), x.shape[2:]
        cols = im2col(x, kernel, stride, dilation, pads, fill=_lowest(xp, x.dtype))  # (N, C, *K, *L)
        n, c, out = x.shape[0], x.shape[1], cols.shape[2 + len(kernel):]
        cols = cols.reshape((n, c, math.prod(kernel)) + out)
        self.arg = cols.argmax(axis=2)                       # first maximum in row-major window order
        return xp.take_along_axis(cols, self.arg[:, :, None], axis=2)[:, :, 0]

    def backward(self, g):
        from ..tensor import Tensor
        xp = xp_of(g.data)
        kernel, stride, dilation, pads = self.grid
        kk, nd = math.prod(kernel), len(kernel)
        slots = xp.arange(kk).reshape((1, 1, kk) + (1,) * nd)
        route = Tensor._make((slots == self.arg[:, :, None]).astype(g.dtype))   # (N, C, ∏K, *L) one-hot
        n, c = g.shape[:2]
        dcols = (g.expand_dims(2) * route).reshape((n, c * kk, math.prod(g.shape[2:])))
        return (Fold.apply(dcols, size=self.size, kernel=kernel, stride=stride, dilation=dilation, pads=pads),)


class AvgPool(Function):
    """Window sums divided by ``divisor``: an int, or an array (*L) (the count of the window's
    non-padding elements when padding is excluded). ``pads`` may pass beyond the ``counted`` padding
    (ceil_mode's extra windows): those positions are never counted."""

    def forward(self, x, kernel, stride, pads, divisor):
        self.grid, self.size = (kernel, stride, pads), x.shape[2:]
        ones = (1,) * len(kernel)
        cols = im2col(x, kernel, stride, ones, pads)                            # (N, C, *K, *L)
        n, c, out = x.shape[0], x.shape[1], cols.shape[2 + len(kernel):]
        self.div = divisor if isinstance(divisor, int) else divisor.astype(x.dtype, copy=False)
        return cols.reshape((n, c, math.prod(kernel)) + out).sum(axis=2) / self.div

    def backward(self, g):
        from ..tensor import Tensor
        kernel, stride, pads = self.grid
        kk = math.prod(kernel)
        n, c = g.shape[:2]
        share = g / (self.div if isinstance(self.div, int) else Tensor._make(self.div))
        dcols = share.expand_dims(2).broadcast_to((n, c, kk) + g.shape[2:]).reshape((n, c * kk, math.prod(g.shape[2:])))
        return (Fold.apply(dcols, size=self.size, kernel=kernel, stride=stride, dilation=(1,) * len(kernel),
                           pads=pads),)
