"""Module-level tensor functions: minigrad.maximum, where, concatenate, stack, split, creation helpers,
and the math of issue 17 (minigrad.sin, atan2, isclose, cumsum, sort, ...), each the Tensor method
of the same name."""
from __future__ import annotations

import numpy as np

from . import ops
from .backend import check_device, xp_of
from .backend import device_of as backend_device
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
    """Elementwise ``a if cond else b``; ``cond`` is a boolean Tensor or array (no gradient).
    a and b may both be Python numbers: they become tensors on cond's device (ints int64, floats
    float32), so where(cond, 4, 2) is an int64 tensor, as in PyTorch."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        device = cond.device if isinstance(cond, Tensor) else backend_device(cond)
        a = Tensor(a, device=device)
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


# ---------------------------------------------------------------- math (issue 17)
def _t(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _unary(name):
    def f(x):
        return getattr(_t(x), name)()
    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"Elementwise {name} of a Tensor (or array-like); the same as ``Tensor.{name}``."
    return f


UNARY = ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "arcsin",
         "arccos", "arctan", "arcsinh", "arccosh", "arctanh", "log2", "log10", "log1p", "exp2", "expm1", "reciprocal",
         "rsqrt", "square", "erf", "erfc", "sign", "floor", "ceil", "trunc", "isnan", "isinf", "isfinite",
         "bitwise_not", "exp", "log", "sqrt", "abs")
for _name in UNARY:
    globals()[_name] = _unary(_name)


def round(x, decimals=0) -> Tensor:
    return _t(x).round(decimals)


def atan2(a, b) -> Tensor:
    """The angle of the point (b, a) in (-pi, pi], elementwise (broadcasting)."""
    return ops.Atan2.apply(*_pair(a, b))


arctan2 = atan2


def floor_divide(a, b) -> Tensor:
    """floor(a / b), as Python's // (zero gradient)."""
    return ops.FloorDivide.apply(*_pair(a, b))


def remainder(a, b) -> Tensor:
    """a - b·floor(a/b): the sign of the divisor b (Python's %, np.remainder, torch.remainder)."""
    return ops.Remainder.apply(*_pair(a, b))


def fmod(a, b) -> Tensor:
    """a - b·trunc(a/b): the sign of the dividend a (C's fmod, np.fmod, torch.fmod)."""
    return ops.Fmod.apply(*_pair(a, b))


def bitwise_and(a, b) -> Tensor:
    return ops.BitwiseAnd.apply(*_pair(a, b))


def bitwise_or(a, b) -> Tensor:
    return ops.BitwiseOr.apply(*_pair(a, b))


def bitwise_xor(a, b) -> Tensor:
    return ops.BitwiseXor.apply(*_pair(a, b))


def left_shift(a, b) -> Tensor:
    return ops.LeftShift.apply(*_pair(a, b))


def right_shift(a, b) -> Tensor:
    return ops.RightShift.apply(*_pair(a, b))


def isclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False) -> Tensor:
    """|a - b| <= atol + rtol·|b| elementwise (bool, no gradient), as np.isclose and torch.isclose."""
    a, b = _pair(a, b)
    return ops.IsClose.apply(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)


def cumsum(x, axis=None) -> Tensor:
    return _t(x).cumsum(axis)


def cumprod(x, axis=None) -> Tensor:
    return _t(x).cumprod(axis)


def logcumsumexp(x, axis=None) -> Tensor:
    return _t(x).logcumsumexp(axis)


def sort(x, axis=-1, descending=False):
    """(values, indices) along ``axis``, as Tensor.sort."""
    return _t(x).sort(axis, descending)


def argsort(x, axis=-1, descending=False) -> Tensor:
    return _t(x).argsort(axis, descending)


def topk(x, k, axis=-1, largest=True, sorted=True):
    """(values, indices) of the k largest along ``axis``, as Tensor.topk."""
    return _t(x).topk(k, axis, largest, sorted)


def argmax(x, axis=None, keepdims=False) -> Tensor:
    return _t(x).argmax(axis, keepdims)


def argmin(x, axis=None, keepdims=False) -> Tensor:
    return _t(x).argmin(axis, keepdims)


def prod(x, axis=None, keepdims=False) -> Tensor:
    return _t(x).prod(axis, keepdims)


def any(x, axis=None, keepdims=False) -> Tensor:
    return _t(x).any(axis, keepdims)


def all(x, axis=None, keepdims=False) -> Tensor:
    return _t(x).all(axis, keepdims)


def norm(x, p=2, axis=None, keepdims=False) -> Tensor:
    """The vector p-norm (p = 1, 2, inf, -inf) over ``axis`` (all elements when None)."""
    return _t(x).norm(p, axis, keepdims)


def std(x, axis=None, keepdims=False, ddof=0) -> Tensor:
    return _t(x).std(axis, keepdims, ddof)


def var(x, axis=None, keepdims=False, ddof=0) -> Tensor:
    return _t(x).var(axis, keepdims, ddof)


MATH = UNARY + ("round", "atan2", "arctan2", "floor_divide", "remainder", "fmod", "bitwise_and", "bitwise_or",
                "bitwise_xor", "left_shift", "right_shift", "isclose", "cumsum", "cumprod", "logcumsumexp", "sort",
                "argsort", "topk", "argmax", "argmin", "prod", "any", "all", "norm", "std", "var")
