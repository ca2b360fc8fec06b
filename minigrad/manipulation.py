"""Array manipulation and indexing with NumPy's (and, where NumPy has none, PyTorch's) names:
tril, triu, flip, roll, repeat, tile, meshgrid, diagonal, trace; gather, scatter, scatter_add,
take_along_axis, index_select, masked_fill.

Most are views or gathers written with existing ops (GetItem, Where, reshape/broadcast), so their
gradients and second derivatives come with those ops; a gather's backward (IndexAdd) adds repeated
indices in a fixed order. Roll and Scatter are ops of their own (minigrad.ops.movement, .indexing).
Index arguments are integer Tensors or arrays; negative indices count from the end, as in NumPy.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .tensor import Tensor, _axis


def _index_array(index, like: Tensor, what: str):
    """An integer index as an array of ``like``'s array module."""
    a = index.data if isinstance(index, Tensor) else like._xp.asarray(index)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{what}: index must hold integers, got {a.dtype}")
    return a


def _in_range(a, n, what, dim):
    """a with negative entries wrapped, after checking -n <= a < n (an IndexError naming the bad entry)."""
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < -n or hi >= n:
            raise IndexError(f"{what}: index {hi if hi >= n else lo} is out of range for dimension {dim} of size {n}")
    return a % n if n else a


def _along(x: Tensor, index, dim: int, what: str):
    """The advanced index that reads x along ``dim`` at ``index`` (same ndim as x, other dims taken as
    their leading index.shape[d] positions): a tuple of broadcasting integer arrays."""
    xp = x._xp
    if index.ndim != x.ndim:
        raise ValueError(f"{what}: index has {index.ndim} dimensions but the tensor has {x.ndim} ({x.shape})")
    for d, (i, n) in enumerate(zip(index.shape, x.shape)):
        if d != dim and i > n:
            raise ValueError(f"{what}: index shape {index.shape} exceeds the tensor's shape {x.shape} in dimension {d}")
    index = _in_range(index, x.shape[dim], what, dim)
    nd = x.ndim
    return tuple(index if d == dim else xp.arange(index.shape[d]).reshape((-1,) + (1,) * (nd - d - 1))
                 for d in range(nd))


# ------------------------------------------------------------------ triangles, flips, rolls

def _tri_mask(x: Tensor, k: int, what: str):
    if x.ndim < 2:
        raise ValueError(f"{what}: needs at least 2 dimensions, got shape {x.shape}")
    n, m = x.shape[-2:]
    return x._xp.tri(n, m, k, dtype=bool)


def tril(x: Tensor, k: int = 0) -> Tensor:
    """The lower triangle of the last two dims (j <= i + k); the rest is 0."""
    return ops.Where.apply(x, _zero(x), cond=_tri_mask(x, k, "tril"))


def triu(x: Tensor, k: int = 0) -> Tensor:
    """The upper triangle of the last two dims (j >= i + k); the rest is 0."""
    return ops.Where.apply(x, _zero(x), cond=~_tri_mask(x, k - 1, "triu"))


def _zero(x: Tensor) -> Tensor:
    return Tensor._make(x._xp.zeros((), dtype=x.dtype))


def flip(x: Tensor, axis=None) -> Tensor:
    """Reverse the order of elements along ``axis`` (an int, a tuple, or None for every axis)."""
    axes = range(x.ndim) if axis is None else [_axis(a, x.ndim, "flip") for a in
                                               ((axis,) if isinstance(axis, int) else axis)]
    idx = [slice(None)] * x.ndim
    for a in axes:
        idx[a] = slice(None, None, -1)
    return x[tuple(idx)]


def roll(x: Tensor, shift, axis=None) -> Tensor:
    """numpy.roll: shift elements along ``axis`` (int or tuple, with a matching ``shift``), wrapping
    around; axis None rolls the flattened tensor and keeps the shape."""
    if axis is None:
        if not isinstance(shift, int):
            raise ValueError(f"roll: with axis=None the shift must be one int, got {shift!r}")
        return ops.Roll.apply(x, shift=int(shift), axis=None)
    if isinstance(axis, int):
        if not isinstance(shift, int):
            raise ValueError(f"roll: one axis needs one int shift, got {shift!r}")
        return ops.Roll.apply(x, shift=int(shift), axis=_axis(axis, x.ndim, "roll"))
    axis = tuple(_axis(a, x.ndim, "roll") for a in axis)
    shift = (shift,) * len(axis) if isinstance(shift, int) else tuple(int(s) for s in shift)
    if len(shift) != len(axis):
        raise ValueError(f"roll: {len(shift)} shifts for {len(axis)} axes")
    return ops.Roll.apply(x, shift=shift, axis=axis)


# ------------------------------------------------------------------ repeat, tile, meshgrid

def repeat(x: Tensor, repeats, axis=None) -> Tensor:
    """numpy.repeat: each element repeated ``repeats`` times along ``axis`` (None: of the flattened
    tensor). ``repeats`` is an int or one count per element along the axis. (PyTorch calls this
    repeat_interleave; PyTorch's Tensor.repeat is ``tile``.)"""
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = _axis(axis, x.ndim, "repeat")
    n = x.shape[axis]
    if isinstance(repeats, (int, np.integer)):
        if repeats < 0:
            raise ValueError(f"repeat: repeats must be >= 0, got {repeats}")
        r = int(repeats)
        y = x.expand_dims(axis + 1)
        y = y.broadcast_to(y.shape[:axis + 1] + (r,) + y.shape[axis + 2:])
        return y.reshape(x.shape[:axis] + (n * r,) + x.shape[axis + 1:])
    counts = np.asarray(repeats.numpy() if isinstance(repeats, Tensor) else repeats)
    if counts.ndim != 1 or counts.shape[0] != n or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise ValueError(f"repeat: repeats must be an int or {n} non-negative ints (one per element along axis "
                         f"{axis}), got {counts.tolist()}")
    src = x._xp.asarray(np.repeat(np.arange(n), counts))
    return x[(slice(None),) * axis + (src,)]


def tile(x: Tensor, reps) -> Tensor:
    """numpy.tile: the tensor repeated ``reps`` times per axis (reps aligned to the trailing axes;
    a longer reps adds leading axes). PyTorch's Tensor.repeat(*sizes) is the same."""
    reps = (int(reps),) if isinstance(reps, (int, np.integer)) else tuple(int(r) for r in reps)
    if any(r < 0 for r in reps):
        raise ValueError(f"tile: reps must be >= 0, got {reps}")
    nd = max(len(reps), x.ndim)
    reps = (1,) * (nd - len(reps)) + reps
    shape = (1,) * (nd - x.ndim) + x.shape
    inter = tuple(v for s in shape for v in (1, s))                  # (1, s0, 1, s1, ...)
    wide = tuple(v for r, s in zip(reps, shape) for v in (r, s))     # (r0, s0, r1, s1, ...)
    return x.reshape(inter).broadcast_to(wide).reshape(tuple(r * s for r, s in zip(reps, shape)))


def meshgrid(*xs, indexing: str = "xy") -> list:
    """numpy.meshgrid of 1-D tensors: indexing "xy" (NumPy's default: the first two output axes
    swapped, as for image coordinates) or "ij" (PyTorch's default)."""
    if indexing not in ("xy", "ij"):
        raise ValueError(f"meshgrid: indexing must be 'xy' or 'ij', got {indexing!r}")
    for t in xs:
        if t.ndim != 1:
            raise ValueError(f"meshgrid: inputs must be 1-D, got shape {t.shape}")
    shape = [t.shape[0] for t in xs]
    axes = list(range(len(xs)))
    if indexing == "xy" and len(xs) > 1:
        shape[0], shape[1] = shape[1], shape[0]
        axes[0], axes[1] = 1, 0
    out = []
    for t, a in zip(xs, axes):
        s = [1] * len(xs)
        s[a] = t.shape[0]
        out.append(t.reshape(tuple(s)).broadcast_to(tuple(shape)))
    return out


# ------------------------------------------------------------------ diagonals

def diagonal(x: Tensor, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """numpy.diagonal: the elements x[..., i, i + offset] of the (axis1, axis2) planes, as a new last axis."""
    if x.ndim < 2:
        raise ValueError(f"diagonal: needs at least 2 dimensions, got shape {x.shape}")
    a1, a2 = _axis(axis1, x.ndim, "diagonal"), _axis(axis2, x.ndim, "diagonal")
    if a1 == a2:
        raise ValueError(f"diagonal: axis1 and axis2 are both {a1}")
    rest = [a for a in range(x.ndim) if a not in (a1, a2)]
    y = x.transpose(tuple(rest) + (a1, a2)) if rest + [a1, a2] != list(range(x.ndim)) else x
    n1, n2 = x.shape[a1], x.shape[a2]
    k = max(0, min(n1 - max(0, -offset), n2 - max(0, offset)))
    i = x._xp.arange(k)
    return y[(Ellipsis, i + max(0, -offset), i + max(0, offset))]


def trace(x: Tensor, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """numpy.trace: the sum along a diagonal (see diagonal)."""
    return diagonal(x, offset, axis1, axis2).sum(axis=-1)


# ------------------------------------------------------------------ gather and scatter

def take_along_axis(x: Tensor, indices, axis: int) -> Tensor:
    """numpy.take_along_axis: out[..., i, ...] = x[..., indices[..., i, ...], ...] along ``axis``;
    ``indices`` has x's rank and broadcasts against x on the other axes."""
    axis = _axis(axis, x.ndim, "take_along_axis")
    idx = _index_array(indices, x, "take_along_axis")
    if idx.ndim != x.ndim:
        raise ValueError(f"take_along_axis: indices have {idx.ndim} dimensions but the tensor has {x.ndim}")
    try:
        np.broadcast_shapes(idx.shape[:axis] + idx.shape[axis + 1:], x.shape[:axis] + x.shape[axis + 1:])
    except ValueError:
        raise ValueError(f"take_along_axis: indices of shape {idx.shape} do not broadcast against the tensor's "
                         f"shape {x.shape} outside axis {axis}") from None
    idx = _in_range(idx, x.shape[axis], "take_along_axis", axis)
    nd = x.ndim
    return x[tuple(idx if d == axis else x._xp.arange(x.shape[d]).reshape((-1,) + (1,) * (nd - d - 1))
                   for d in range(nd))]


def gather(x: Tensor, dim: int, index) -> Tensor:
    """torch.gather: out[i][j][k] = x[index[i][j][k]][j][k] (dim 0), and so on per dim. index has x's
    rank and, outside ``dim``, at most x's size (it reads the leading positions)."""
    dim = _axis(dim, x.ndim, "gather")
    return x[_along(x, _index_array(index, x, "gather"), dim, "gather")]


def _src_for(x: Tensor, src, index_shape, what):
    """src as a Tensor cut to index's shape (PyTorch reads src's leading positions), or a scalar broadcast."""
    if not isinstance(src, Tensor):
        src = Tensor._make(x._xp.full(index_shape, src, dtype=x.dtype)) if np.ndim(src) == 0 else \
            Tensor(src, dtype=x.dtype, device=x.device)
    if src.ndim != len(index_shape) or any(i > s for i, s in zip(index_shape, src.shape)):
        raise ValueError(f"{what}: src of shape {src.shape} is smaller than index {tuple(index_shape)}")
    if src.shape != tuple(index_shape):
        src = src[tuple(slice(0, n) for n in index_shape)]
    return src


def scatter(x: Tensor, dim: int, index, src) -> Tensor:
    """torch.scatter (out of place): x with out[index[i][j]][j] = src[i][j] (dim 0), and so on per dim.
    Where an index repeats a target, the last source in C order wins (deterministically; PyTorch leaves
    that unspecified) and the overwritten ones get no gradient. ``src`` may be a scalar."""
    dim = _axis(dim, x.ndim, "scatter")
    idx = _index_array(index, x, "scatter")
    at = _along(x, idx, dim, "scatter")
    return ops.Scatter.apply(x, _src_for(x, src, idx.shape, "scatter"), idx=at)


def scatter_add(x: Tensor, dim: int, index, src) -> Tensor:
    """torch.scatter_add (out of place): x with src[i][j] added at out[index[i][j]][j] (dim 0);
    repeated targets accumulate, in C order of src on NumPy (the backward of a gather)."""
    dim = _axis(dim, x.ndim, "scatter_add")
    idx = _index_array(index, x, "scatter_add")
    at = _along(x, idx, dim, "scatter_add")
    return x + ops.IndexAdd.apply(_src_for(x, src, idx.shape, "scatter_add"), shape=x.shape, idx=at)


def index_select(x: Tensor, dim: int, index) -> Tensor:
    """torch.index_select: the entries ``index`` (1-D) of axis ``dim``, in that order, repeats allowed."""
    dim = _axis(dim, x.ndim, "index_select")
    idx = _index_array(index, x, "index_select")
    if idx.ndim != 1:
        raise ValueError(f"index_select: index must be 1-D, got shape {idx.shape}")
    return x[(slice(None),) * dim + (_in_range(idx, x.shape[dim], "index_select", dim),)]


def masked_fill(x: Tensor, mask, value) -> Tensor:
    """x with ``value`` (a number or a 0-d Tensor, which gets the gradient) where ``mask`` (bool,
    broadcasting to x's shape) is True."""
    m = mask.data if isinstance(mask, Tensor) else x._xp.asarray(mask)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: mask must be boolean, got {m.dtype}")
    try:
        if np.broadcast_shapes(m.shape, x.shape) != x.shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"masked_fill: mask of shape {m.shape} does not broadcast to the tensor's shape {x.shape}") \
            from None
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: value must be a number or a 0-d tensor, got shape {value.shape}")
        v = value
    else:
        v = Tensor._make(x._xp.asarray(value, dtype=x.dtype))
    return ops.Where.apply(v, x, cond=m)
