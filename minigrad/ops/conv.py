"""Convolution through im2col and a matmul: Unfold (im2col), Fold (col2im), Conv and ConvTranspose,
for any number of spatial dims (conv1d uses one, conv2d two).

The window grid. x is (N, C, *S), S the spatial sizes. A kernel K = (k1, ...) with stride s,
dilation d and padding (lo, hi) per spatial dim has L = (l1, ...) positions per dim:

    l = (S + lo + hi - d (k - 1) - 1) // s + 1

cols (N, C, *K, *L): cols[n, c, i.., p..] = xpad[n, c, p·s + i·d ..], xpad = x with lo/hi padding.
im2col builds it with one strided-slice copy per kernel offset i; col2im adds the offsets' slices
back in the same fixed order (overlapping windows accumulate by plain in-place adds, never by a
scatter), so every result is the same bit for bit on every run and every array module.

Grouped convolution: channels split into g groups; cols (N, g, C/g·∏K, ∏L) and the weight
(g, O/g, C/g·∏K) meet in one batched matmul (N, g, O/g, ∏L).
"""
from __future__ import annotations

import itertools
import math

from ..autograd import Function
from ._util import saved, xp_of


def grid_size(size, k, s, d, lo, hi):
    """Number of window positions along one spatial dim."""
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def _offset_slices(off, stride, dilation, grid):
    """For kernel offset ``off``: the (N, C, *) slice of xpad that all windows read at that offset."""
    return (slice(None), slice(None)) + tuple(
        slice(i * d, i * d + s * (n - 1) + 1, s) for i, d, s, n in zip(off, dilation, stride, grid))


def im2col(x, kernel, stride, dilation, pads, fill=0):
    """x (N, C, *S) -> cols (N, C, *K, *L), padding filled with ``fill``."""
    xp = xp_of(x)
    n, c, size = x.shape[0], x.shape[1], x.shape[2:]
    grid = tuple(grid_size(sz, k, s, d, lo, hi) for sz, k, s, d, (lo, hi) in zip(size, kernel, stride, dilation, pads))
    if any(p for lh in pads for p in lh):
        xpad = xp.full((n, c) + tuple(sz + lo + hi for sz, (lo, hi) in zip(size, pads)), fill, dtype=x.dtype)
        xpad[(slice(None), slice(None)) + tuple(slice(lo, lo + sz) for sz, (lo, _) in zip(size, pads))] = x
    else:
        xpad = x
    cols = xp.empty((n, c) + tuple(kernel) + grid, dtype=x.dtype)
    for off in itertools.product(*(range(k) for k in kernel)):
        cols[(slice(None), slice(None)) + off] = xpad[_offset_slices(off, stride, dilation, grid)]
    return cols


def col2im(cols, size, kernel, stride, dilation, pads):
    """cols (N, C, *K, *L) -> (N, C, *size): each window's values added back where im2col read them,
    kernel offsets in row-major order (the adjoint of im2col with fill 0)."""
    xp = xp_of(cols)
    nd = len(kernel)
    n, c, grid = cols.shape[0], cols.shape[1], cols.shape[2 + nd:]
    xpad = xp.zeros((n, c) + tuple(sz + lo + hi for sz, (lo, hi) in zip(size, pads)), dtype=cols.dtype)
    for off in itertools.product(*(range(k) for k in kernel)):
        xpad[_offset_slices(off, stride, dilation, grid)] += cols[(slice(None), slice(None)) + off]
    return xpad[(slice(None), slice(None)) + tuple(slice(lo, lo + sz) for sz, (lo, _) in zip(size, pads))]


def _grid_of(size, kernel, stride, dilation, pads):
    return tuple(grid_size(*a, *p) for a, p in zip(zip(size, kernel, stride, dilation), pads))


class Unfold(Function):
    """im2col as an op: x (N, C, *S) -> (N, C·∏K, ∏L), the window grid in the module docstring.
    Its adjoint is Fold with the same grid (and Fold's is Unfold), so both orders of derivative hold."""

    def forward(self, x, kernel, stride, dilation, pads):
        self.size, self.grid = x.shape[2:], (kernel, stride, dilation, pads)
        cols = im2col(x, kernel, stride, dilation, pads)
        n, c = x.shape[:2]
        return cols.reshape(n, c * math.prod(kernel), math.prod(cols.shape[2 + len(kernel):]))

    def backward(self, g):
        kernel, stride, dilation, pads = self.grid
        return (Fold.apply(g, size=self.size, kernel=kernel, stride=stride, dilation=dilation, pads=pads),)


class Fold(Function):
    """col2im as an op: cols (N, C·∏K, ∏L) -> (N, C, *size), overlapping windows summed."""

    def forward(self, cols, size, kernel, stride, dilation, pads):
        self.grid = (kernel, stride, dilation, pads)
        n, ck, nl = cols.shape
        grid = _grid_of(size, kernel, stride, dilation, pads)
        kk = math.prod(kernel)
        if ck % kk or nl != math.prod(grid):
            raise ValueError(f"fold: input of shape {cols.shape} does not fit kernel {tuple(kernel)} and output size "
                             f"{tuple(size)}: expected (N, C·{kk}, {math.prod(grid)})")
        return col2im(cols.reshape((n, ck // kk) + tuple(kernel) + grid), size, kernel, stride, dilation, pads)

    def backward(self, g):
        kernel, stride, dilation, pads = self.grid
        return (Unfold.apply(g, kernel=kernel, stride=stride, dilation=dilation, pads=pads),)


class Conv(Function):
    """Convolution (cross-correlation, as PyTorch): x (N, C, *S), w (O, C/g, *K), optional b (O,)
    -> (N, O, *L). Forward: cols = im2col(x), y = w @ cols per group. Backward in Tensor ops:
    dx = Fold(wᵀ @ g), dw = g @ colsᵀ summed over the batch, db = g summed over batch and space.
    Keeps cols (N, g, C/g·∏K, ∏L) for the weight gradient."""

    def forward(self, x, w, b=None, *, stride, dilation, pads, groups):
        if not x.dtype == w.dtype == (w.dtype if b is None else b.dtype):
            raise TypeError(f"conv: input {x.dtype} and weight {w.dtype}"
                            + ("" if b is None else f" and bias {b.dtype}") + " must have one dtype")
        self.grid, self.groups = (tuple(w.shape[2:]), stride, dilation, pads), groups
        n, c, size = x.shape[0], x.shape[1], x.shape[2:]
        o, kernel = w.shape[0], w.shape[2:]
        ck = c // groups * math.prod(kernel)
        cols = im2col(x, kernel, stride, dilation, pads)               # (N, C, *K, *L)
        grid = cols.shape[2 + len(kernel):]
        self.cols = cols.reshape(n, groups, ck, math.prod(grid))       # (N, g, C/g·∏K, ∏L)
        y = w.reshape(groups, o // groups, ck) @ self.cols             # (N, g, O/g, ∏L)
        y = y.reshape((n, o) + grid)
        if b is not None:
            y += b.reshape((o,) + (1,) * len(kernel))
        self.size = size
        return y

    def backward(self, g):
        x, w = self.inputs[0], self.inputs[1]
        kernel, stride, dilation, pads = self.grid
        n, c = x.shape[:2]
        o, gr = w.shape[0], self.groups
        ck = c // gr * math.prod(kernel)
        nl = math.prod(g.shape[2:])
        gm = g.reshape((n, gr, o // gr, nl))                           # (N, g, O/g, ∏L)
        wm = w.reshape((gr, o // gr, ck))                              # (g, O/g, C/g·∏K)
        dx = dw = db = None
        if x.requires_grad:
            dcols = wm.swapaxes(-1, -2) @ gm                           # (N, g, C/g·∏K, ∏L)
            dx = Fold.apply(dcols.reshape((n, gr * ck, nl)), size=self.size, kernel=kernel, stride=stride,
                            dilation=dilation, pads=pads)
        if w.requires_grad:
            cols = saved(self.cols, lambda: Unfold.apply(x, kernel=kernel, stride=stride, dilation=dilation,
                                                         pads=pads).reshape((n, gr, ck, nl)))
            # per sample and group (O/g, ∏L) @ (∏L, C/g·∏K), summed over the batch (no transposed copies)
            dw = (gm @ cols.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)
        if len(self.inputs) > 2 and self.inputs[2].requires_grad:
            db = g.sum(axis=(0,) + tuple(range(2, g.ndim)))
        return dx, dw, db


class ConvTranspose(Function):
    """Transposed convolution: x (N, Cin, *S), w (Cin, Cout/g, *K), optional b (Cout,) ->
    (N, Cout, *size): each input element spreads w over its window (the adjoint of Conv with
    respect to its input). Forward: cols = wᵀ @ x per group, y = col2im(cols) on the output grid
    (whose window positions are exactly S). Backward: Unfold(g) meets w and x in matmuls."""

    def forward(self, x, w, b=None, *, stride, dilation, pads, groups, size):
        if not x.dtype == w.dtype == (w.dtype if b is None else b.dtype):
            raise TypeError(f"conv_transpose: input {x.dtype} and weight {w.dtype}"
                            + ("" if b is None else f" and bias {b.dtype}") + " must have one dtype")
        self.grid, self.groups = (tuple(w.shape[2:]), stride, dilation, pads), groups
        n, cin, s = x.shape[0], x.shape[1], x.shape[2:]
        kernel, cout = w.shape[2:], w.shape[1] * groups
        ck = w.shape[1] * math.prod(kernel)
        xm = x.reshape(n, groups, cin // groups, math.prod(s))                   # (N, g, Cin/g, ∏S)
        cols = w.reshape(groups, cin // groups, ck).swapaxes(-1, -2) @ xm        # (N, g, Cout/g·∏K, ∏S)
        y = col2im(cols.reshape((n, cout) + tuple(kernel) + tuple(s)), size, kernel, stride, dilation, pads)
        if b is not None:
            y += b.reshape((cout,) + (1,) * len(kernel))
        return y

    def backward(self, g):
        x, w = self.inputs[0], self.inputs[1]
        kernel, stride, dilation, pads = self.grid
        n, cin, gr = x.shape[0], x.shape[1], self.groups
        ns = math.prod(x.shape[2:])
        ck = w.shape[1] * math.prod(kernel)
        gc = Unfold.apply(g, kernel=kernel, stride=stride, dilation=dilation, pads=pads)
        gc = gc.reshape((n, gr, ck, ns))                                           # (N, g, Cout/g·∏K, ∏S)
        dx = dw = db = None
        if x.requires_grad:
            dx = (w.reshape((gr, cin // gr, ck)) @ gc).reshape(x.shape)            # (N, g, Cin/g, ∏S)
        if w.requires_grad:
            xm = x.reshape((n, gr, cin // gr, ns))
            dw = (xm @ gc.swapaxes(-1, -2)).sum(axis=0).reshape(w.shape)          # (g, Cin/g, Cout/g·∏K)
        if len(self.inputs) > 2 and self.inputs[2].requires_grad:
            db = g.sum(axis=(0,) + tuple(range(2, g.ndim)))
        return dx, dw, db
