"""Module-level tensor functions: minigrad.maximum, where, concatenate, stack, split, creation helpers."""
from __future__ import annotations

import numpy as np

from . import ops
from .backend import check_device, xp_of
from .tensor import Tensor, _axis, _lift


def _pair(a, b):
    if not isinstance(a, Tensor):
        if not isinstance(b, Tensor):
            raise TypeError("at least one argument must be a Tensor")
        a = _lift(a, b)
    return a, _lift(b, a)


def maximum(a, b) -> Tensor:
    return ops.Maximum.apply(*_pair(a, b))


def minimum(a, b) -> Tensor:
    return ops.Minimum.apply(*_pair(a, b))


def where(cond, a, b) -> Tensor:
    """Elementwise ``a if cond else b``; ``cond`` is a boolean Tensor or array (no gradient)."""
    a, b = _pair(a, b)
    c = cond.data if isinstance(cond, Tensor) else a._xp.asarray(cond)
    if c.dtype != bool:
        raise TypeError(f"where: condition must be boolean, got {c.dtype}")
    return ops.Where.apply(a, b, cond=c)


def concatenate(tensors, axis=0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: need at least one tensor")
    return ops.Concatenate.apply(*tensors, axis=_axis(axis, tensors[0].ndim, "concatenate"))


def stack(tensors, axis=0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: need at least one tensor")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    axis = _axis(axis, tensors[0].ndim + 1, "stack")
    return concatenate([t.expand_dims(axis) for t in tensors], axis=axis)


def split(t: Tensor, indices_or_sections, axis=0) -> list[Tensor]:
    """NumPy's split: an int is a number of equal sections, a list gives the split points."""
    axis = _axis(axis, t.ndim, "split")
    n = t.shape[axis]
    if isinstance(indices_or_sections, int):
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise ValueError(f"split: axis {axis} of size {n} cannot be split into {indices_or_sections} equal sections")
        step = n // indices_or_sections
        bounds = list(range(0, n + 1, step))
    else:
        bounds = [0] + [int(i) for i in indices_or_sections] + [n]
    lead = (slice(None),) * (axis % t.ndim)
    return [t[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def tensor(data, requires_grad=False, dtype=None, device=None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def zeros(*shape, dtype=np.float32, device=None, requires_grad=False) -> Tensor:
    """device None: the default device (minigrad.backend.get_default_device())."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(xp_of(check_device(device)).zeros(shape, dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, device=None, requires_grad=False) -> Tensor:
    """device None: the default device (minigrad.backend.get_default_device())."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(xp_of(check_device(device)).ones(shape, dtype=dtype), requires_grad=requires_grad)
