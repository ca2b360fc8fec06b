"""Shape and indexing ops: views in forward, their adjoints in backward."""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import check_values, device_of, get_array_module, raise_deferred_checks
from ..tensor import Tensor
from ._util import xp_of


class Reshape(Function):
    def forward(self, a, shape):
        self.src = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {a.shape} ({a.size} elements) "
                             f"into shape {shape}") from None

    def backward(self, g):
        return (g.reshape(self.src),)

    def backward_arrays(self, g):            # a view of the array, no op to record
        return (g.reshape(self.src),)


class Transpose(Function):
    def forward(self, a, axes):
        self.inv = tuple(np.argsort(axes))
        return a.transpose(axes)

    def backward(self, g):
        return (g.transpose(self.inv),)

    def backward_arrays(self, g):
        return (g.transpose(self.inv),)


class BroadcastTo(Function):
    def forward(self, a, shape):
        self.src = a.shape
        try:
            return xp_of(a).broadcast_to(a, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: shape {a.shape} cannot broadcast to {shape}") from None

    def backward(self, g):
        return (SumTo.apply(g, shape=self.src),)


def sum_to_array(a, shape):
    """Sum an array that was broadcast from ``shape`` back to ``shape``."""
    shape = tuple(shape)
    if a.shape == shape:
        return a
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and a.shape[lead + i] != 1)
    out = a.sum(axis=axes, keepdims=True) if axes else a
    return out.reshape(shape)


class SumTo(Function):
    """Sum a broadcast result back to ``shape`` (the adjoint of broadcast_to)."""

    def forward(self, a, shape):
        self.src = a.shape
        return sum_to_array(a, shape)

    def backward(self, g):
        return (g.broadcast_to(self.src),)


def _check_index(idx, shape):
    """Reject out-of-range integer-array indices with a clear IndexError (numpy's would be opaque later);
    on a device the check is read later, with others (backend.check_values)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    dim = 0
    for it in items:
        if it is None:
            continue
        if it is Ellipsis:
            dim = len(shape) - sum(1 for j in items if j is not None and j is not Ellipsis
                                   and not (hasattr(j, "dtype") and j.dtype == bool))
            continue
        if hasattr(it, "dtype") and it.dtype.kind in "iu" and it.size and dim < len(shape):
            xp, n = get_array_module(it), shape[dim]

            def message(it=it, n=n, dim=dim, xp=xp):
                lo, hi = int(xp.min(it)), int(xp.max(it))
                return (f"index {hi if hi >= n else lo} is out of range for dimension {dim} of size {n} "
                        f"(shape {shape})")
            if device_of(it) == "cuda":     # checked on the device, read later with the step's other reads
                check_values(((it < -n) | (it >= n)).any(), message, "cuda")
            elif int(xp.min(it)) < -n or int(xp.max(it)) >= n:
                raise IndexError(message())
        dim += it.ndim if (hasattr(it, "dtype") and it.dtype == bool) else 1


class GetItem(Function):
    """x[idx] with basic slicing or integer/boolean arrays."""

    def forward(self, a, idx):
        _check_index(idx, a.shape)
        self.shape, self.idx, self.dtype = a.shape, idx, a.dtype
        try:
            return a[idx]
        except IndexError as e:
            raise_deferred_checks()       # failing anyway: a filed check of the index says it best
            raise IndexError(f"{e} (tensor shape {a.shape})") from None

    def backward(self, g):
        return (IndexAdd.apply(g, shape=self.shape, idx=self.idx),)

    def backward_arrays(self, g):
        if _is_basic(self.idx):    # a basic slice: the engine adds it into one buffer (see SliceGrad)
            return (SliceGrad(self.shape, self.idx, g),)
        return (IndexAdd.apply(Tensor._make(g), shape=self.shape, idx=self.idx),)


class SliceGrad(Tensor):
    """A first-order gradient that is zero except on one basic slice: zeros(shape)[idx] = values.

    Splitting a tensor into pieces (q, k, v from one projection) gives each piece's gradient as
    a SliceGrad; the backward engine adds them into a single buffer (``add_into``) instead of
    allocating a full-size zero array per piece. Reading ``.data`` builds the dense array once.
    """

    __slots__ = ("full_shape", "idx", "values", "_dense")

    def __init__(self, shape, idx, values):
        self.full_shape, self.idx, self.values, self._dense = tuple(shape), idx, values, None
        self.requires_grad, self.grad, self._ctx = False, None, None

    @property
    def data(self):
        if self._dense is None:
            self._dense = get_array_module(self.values).zeros(self.full_shape, dtype=self.values.dtype)
            self._dense[self.idx] = self.values
        return self._dense

    shape = property(lambda self: self.full_shape)
    dtype = property(lambda self: self.values.dtype)

    def add_into(self, buf):
        """buf += this gradient, touching only the slice."""
        buf[self.idx] += self.values


def _is_basic(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (slice, int, type(None))) or i is Ellipsis for i in items)


class IndexAdd(Function):
    """zeros(shape) with ``g`` scatter-added at ``idx``: repeated indices accumulate. Adjoint of GetItem."""

    def forward(self, g, shape, idx):
        self.idx = idx
        out = xp_of(g).zeros(shape, dtype=g.dtype)
        if _is_basic(idx):
            out[idx] = g          # a basic index never repeats an element
        else:
            self._scatter_add(out, idx, g)
        return out

    @staticmethod
    def _scatter_add(out, idx, values):
        """out[idx] += values with repeated indices accumulating, on numpy or cupy."""
        xp = get_array_module(out)
        if hasattr(xp, "add") and hasattr(xp.add, "at"):
            xp.add.at(out, idx, values)
        else:  # older CuPy
            import cupyx
            cupyx.scatter_add(out, idx, values)

    def backward(self, gg):
        return (gg[self.idx],)


def _row_indices(g, idx):
    """Whether idx is an integer NumPy array indexing axis 0 (an embedding's backward) of NumPy g."""
    return type(g) is np.ndarray and isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and idx.size > 1


def _rows(out, idx, values):
    """idx flattened into [0, V) (indices were bounds-checked in forward) and values as (N, …) rows."""
    flat = idx.reshape(-1) % out.shape[0]
    return flat, values.reshape((flat.size,) + out.shape[1:])


@IndexAdd.variant("native")
class IndexAddNative(IndexAdd):
    """The rows added in order by a native loop (np.add.at's sums, bit for bit)."""

    @staticmethod
    def takes(g, shape, idx):
        return _row_indices(g, idx) and len(shape) == 2 and dispatch.cpu_native(g) is not None

    @staticmethod
    def _scatter_add(out, idx, values):
        flat, rows = _rows(out, idx, values)
        dispatch.cpu_native(out).scatter_add_rows(out, flat, rows)


@IndexAdd.variant("numpy")
class IndexAddSorted(IndexAdd):
    """np.add.at is slow (a Python-level iterator per element): sort the rows by index instead."""

    @staticmethod
    def takes(g, shape, idx):
        return _row_indices(g, idx)

    @staticmethod
    def _scatter_add(out, idx, values):
        scatter_add_sorted(out, idx, values)


def scatter_add_sorted(out, idx, values):
    """out[idx] += values for an integer index array on axis 0: the rows sorted by index (stably,
    so each index's rows are summed in their original order), summed per index with one reduceat,
    and added once per distinct index."""
    flat, rows = _rows(out, idx, values)
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    out[ordered[starts]] += np.add.reduceat(rows[order], starts, axis=0)


@IndexAdd.variant("device")
class IndexAddSegmented(IndexAdd):
    """On a device: cupy.add.at and cupyx.scatter_add accumulate repeated indices with float
    atomics, whose order (and so the bits of the sum) changes from run to run. Instead the
    elements are sorted by destination (stably) and each destination sums its elements in their
    original order, one thread per (destination, column): identical bits on every run, and the
    same bits as np.add.at and IndexAddSorted on the CPU."""

    @staticmethod
    def takes(g, shape, idx):
        return device_of(g) == "cuda"

    @staticmethod
    def _scatter_add(out, idx, values):
        scatter_add_segmented(out, idx, values)


def scatter_add_segmented(out, idx, values):
    """out[idx] += values (any advanced index; repeated destinations accumulate) by sort and
    segmented sum, deterministic on any array module. ``out`` is C-contiguous and ``values`` has
    the shape of ``out[idx]``.

    An integer array indexing axis 0 (an embedding's gradient) scatters whole rows; any other
    index is first turned into flat element positions (arange(out.size).reshape(out.shape)[idx])
    and scatters single elements."""
    xp = get_array_module(out)
    if hasattr(idx, "dtype") and idx.dtype.kind in "iu" and out.ndim >= 1:
        width = int(np.prod(out.shape[1:], dtype=np.int64))
        flat = xp.asarray(idx).reshape(-1) % out.shape[0]               # (N,) destination rows
        rows = values.reshape((flat.size, width))                        # (N, W) W = prod(out.shape[1:])
        target = out.reshape((out.shape[0], width))                      # a view: out is contiguous
    else:
        flat = xp.arange(out.size).reshape(out.shape)[idx].reshape(-1)  # (N,) destination elements
        rows = values.reshape((flat.size, 1))
        target = out.reshape((-1, 1))
    if rows.size == 0:
        return
    order = xp.argsort(flat, kind="stable")                              # (N,) rows grouped by destination
    ordered = flat[order]
    first = xp.concatenate((xp.ones(1, dtype=bool), ordered[1:] != ordered[:-1]))
    starts = xp.flatnonzero(first)                                      # (S,) first row of each segment
    bounds = xp.concatenate((starts, xp.asarray([flat.size], dtype=starts.dtype)))
    target[ordered[starts]] += segment_sums(xp.ascontiguousarray(rows), order, bounds)


_SEGMENT_SUM = None


def segment_sums(rows, order, bounds):
    """(S, W): row s is sum(rows[order[r]] for r in range(bounds[s], bounds[s+1])), added left to
    right: the order np.add.at adds repeated rows in, so the result has its bits. On CuPy one thread
    per output element runs that loop (CuPy's own add.reduceat takes differences of a cumulative
    sum: other bits, and inaccurate for a small segment after large ones). On other array modules
    (the tests' NumPy and strict runs of this code) step k adds the k-th row of every segment
    longer than k: the same additions in the same order."""
    xp = get_array_module(rows)
    if not xp.__name__.startswith("cupy"):
        lengths = bounds[1:] - bounds[:-1]
        acc = rows[order[bounds[:-1]]]                      # (S, W) the first row of each segment
        for k in range(1, int(lengths.max())):
            live = xp.flatnonzero(lengths > k)
            acc[live] += rows[order[bounds[live] + k]]
        return acc
    global _SEGMENT_SUM
    if _SEGMENT_SUM is None:
        _SEGMENT_SUM = xp.ElementwiseKernel(
            "raw T rows, raw int64 order, raw int64 bounds, int64 width", "T seg",
            """
            const long long s = i / width, c = i % width;
            long long r = bounds[s];
            T acc = rows[order[r] * width + c];
            for (++r; r < bounds[s + 1]; ++r) acc += rows[order[r] * width + c];
            seg = acc;
            """, "minigrad_segment_sum")
    width = rows.shape[1]
    seg = xp.empty((bounds.size - 1, width), dtype=rows.dtype)
    _SEGMENT_SUM(rows.reshape(-1), order.astype(xp.int64, copy=False), bounds.astype(xp.int64, copy=False),
                 width, seg)
    return seg


class Concatenate(Function):
    def forward(self, *arrays, axis=0):
        shapes = [a.shape for a in arrays]
        ref = shapes[0]
        for s in shapes[1:]:
            if len(s) != len(ref) or any(x != y for i, (x, y) in enumerate(zip(s, ref)) if i != axis % len(ref)):
                raise ValueError(f"concatenate: shapes {shapes} differ outside axis {axis}")
        self.axis = axis % len(ref)
        self.sizes = [s[self.axis] for s in shapes]
        return xp_of(arrays[0]).concatenate(arrays, axis=self.axis)

    def backward(self, g):
        out, start = [], 0
        lead = (slice(None),) * self.axis
        for t, n in zip(self.inputs, self.sizes):
            out.append(g[lead + (slice(start, start + n),)] if t.requires_grad else None)
            start += n
        return tuple(out)
