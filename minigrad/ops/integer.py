"""Division with rounding and remainders (any real dtype), bitwise ops and shifts (integers, bools).

Sign rules, the same in NumPy and PyTorch:
  floor_divide(a, b) = floor(a / b)                       (Python's //, np.floor_divide, torch.floor_divide)
  remainder(a, b)    = a - b·floor(a / b): the sign of b  (Python's %, np.remainder, torch.remainder)
  fmod(a, b)         = a - b·trunc(a / b): the sign of a  (C's fmod, math.fmod, np.fmod, torch.fmod)
so remainder(-5, 3) = 1 while fmod(-5, 3) = -2. An integer division by zero raises
ZeroDivisionError (as PyTorch; NumPy would return 0 with a warning); a float one gives inf or NaN.

Gradients (floats): floor_divide is piecewise constant (zero gradient, as rounding);
remainder and fmod pass g to a and -g·floor(a/b) (resp. -g·trunc(a/b)) to b, as PyTorch.
Bitwise ops and shifts carry no gradient (``differentiable = False``).
"""
from __future__ import annotations

from ..autograd import Function
from ._util import unbroadcast, xp_of, zeros_grad


def _nonzero_int_divisor(op, b):
    if b.dtype.kind in "iub" and bool((b == 0).any()):
        raise ZeroDivisionError(f"{op}: integer division by zero")


def _const(a):
    from ..tensor import Tensor
    return Tensor._make(a)


class FloorDivide(Function):
    def forward(self, a, b):
        _nonzero_int_divisor("floor_divide", b)
        return xp_of(a).floor_divide(a, b)

    def backward(self, g):
        return zeros_grad(self, 0), zeros_grad(self, 1)


class Remainder(Function):
    def forward(self, a, b):
        _nonzero_int_divisor("remainder", b)
        xp = xp_of(a)
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            self.q = xp.floor_divide(a, b)        # floor(a / b): constant where differentiable
        return xp.remainder(a, b)

    def backward(self, g):
        a, b = self.inputs
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(-g * _const(self.q.astype(g.dtype, copy=False)), b.shape) if b.requires_grad else None)


class Fmod(Function):
    def forward(self, a, b):
        _nonzero_int_divisor("fmod", b)
        xp = xp_of(a)
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            self.q = xp.trunc(a / b)              # trunc(a / b)
        return xp.fmod(a, b)

    def backward(self, g):
        a, b = self.inputs
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(-g * _const(self.q.astype(g.dtype, copy=False)), b.shape) if b.requires_grad else None)


class _Bitwise(Function):
    """An integer/bool binary op of the array module (``ufunc``); no gradient."""
    differentiable = False
    ufunc = ""
    kinds = "iub"                  # dtype kinds accepted

    def forward(self, a, b):
        for x in (a, b):
            if x.dtype.kind not in self.kinds:
                what = "integer or bool" if "b" in self.kinds else "integer"
                raise TypeError(f"{self.ufunc}: needs {what} tensors, got {x.dtype}")
        return getattr(xp_of(a), self.ufunc)(a, b)


class BitwiseAnd(_Bitwise):
    ufunc = "bitwise_and"


class BitwiseOr(_Bitwise):
    ufunc = "bitwise_or"


class BitwiseXor(_Bitwise):
    ufunc = "bitwise_xor"


class LeftShift(_Bitwise):
    ufunc, kinds = "left_shift", "iu"


class RightShift(_Bitwise):
    """Arithmetic shift for signed integers (the sign bit is kept: -8 >> 1 = -4)."""
    ufunc, kinds = "right_shift", "iu"


class BitwiseNot(Function):
    """~x: bitwise complement of integers, logical not of bools; no gradient."""
    differentiable = False

    def forward(self, a):
        if a.dtype.kind not in "iub":
            raise TypeError(f"bitwise_not: needs an integer or bool tensor, got {a.dtype}")
        return xp_of(a).invert(a)


__all__ = [
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "FloorDivide",
    "Fmod",
    "LeftShift",
    "Remainder",
    "RightShift",
]
