"""Elementwise math of one input: trigonometric and hyperbolic functions and their inverses,
exponentials and logarithms in other bases, reciprocal, rsqrt, square, erfc.

Each backward is a Tensor expression of the input (or of the saved output, recomputed under
create_graph), so second derivatives hold. Integer and bool inputs give float32 results.
Domains are NumPy's: outside them the result is NaN (asin(2)), or ±inf at a pole (atanh(1)).
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd import Function
from ._util import float_input, saved, xp_of
from .special import erf_array

_LN2, _LN10 = math.log(2.0), math.log(10.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_erfc64 = np.vectorize(math.erfc, otypes=[np.float64])


class Sin(Function):
    def forward(self, a):
        return xp_of(a).sin(float_input(a))

    def backward(self, g):
        return (g * self.inputs[0].cos(),)


class Cos(Function):
    def forward(self, a):
        return xp_of(a).cos(float_input(a))

    def backward(self, g):
        return (-g * self.inputs[0].sin(),)


class Tan(Function):
    def forward(self, a):
        self.y = xp_of(a).tan(float_input(a))
        return self.y

    def backward(self, g):                       # 1 + tan²
        y = saved(self.y, lambda: self.inputs[0].tan())
        return (g * (1.0 + y * y),)


class Asin(Function):
    def forward(self, a):
        return xp_of(a).arcsin(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g / (1.0 - x * x).sqrt(),)


class Acos(Function):
    def forward(self, a):
        return xp_of(a).arccos(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (-g / (1.0 - x * x).sqrt(),)


class Atan(Function):
    def forward(self, a):
        return xp_of(a).arctan(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g / (1.0 + x * x),)


class Sinh(Function):
    def forward(self, a):
        return xp_of(a).sinh(float_input(a))

    def backward(self, g):
        return (g * self.inputs[0].cosh(),)


class Cosh(Function):
    def forward(self, a):
        return xp_of(a).cosh(float_input(a))

    def backward(self, g):
        return (g * self.inputs[0].sinh(),)


class Asinh(Function):
    def forward(self, a):
        return xp_of(a).arcsinh(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g / (x * x + 1.0).sqrt(),)


class Acosh(Function):
    """Defined for x >= 1."""

    def forward(self, a):
        return xp_of(a).arccosh(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g / (x * x - 1.0).sqrt(),)


class Atanh(Function):
    """Defined for -1 < x < 1."""

    def forward(self, a):
        return xp_of(a).arctanh(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g / (1.0 - x * x),)


class Log2(Function):
    def forward(self, a):
        return xp_of(a).log2(float_input(a))

    def backward(self, g):
        return (g / (self.inputs[0] * _LN2),)


class Log10(Function):
    def forward(self, a):
        return xp_of(a).log10(float_input(a))

    def backward(self, g):
        return (g / (self.inputs[0] * _LN10),)


class Log1p(Function):
    """log(1 + x), accurate for small x."""

    def forward(self, a):
        return xp_of(a).log1p(float_input(a))

    def backward(self, g):
        return (g / (self.inputs[0] + 1.0),)


class Exp2(Function):
    def forward(self, a):
        self.y = xp_of(a).exp2(float_input(a))
        return self.y

    def backward(self, g):
        return (g * saved(self.y, lambda: self.inputs[0].exp2()) * _LN2,)


class Expm1(Function):
    """exp(x) - 1, accurate for small x."""

    def forward(self, a):
        self.y = xp_of(a).expm1(float_input(a))
        return self.y

    def backward(self, g):
        return (g * (saved(self.y, lambda: self.inputs[0].expm1()) + 1.0),)


class Reciprocal(Function):
    def forward(self, a):
        self.y = xp_of(a).reciprocal(float_input(a))
        return self.y

    def backward(self, g):
        y = saved(self.y, lambda: self.inputs[0].reciprocal())
        return (-g * y * y,)


class Rsqrt(Function):
    """1 / sqrt(x)."""

    def forward(self, a):
        xp = xp_of(a)
        self.y = xp.reciprocal(xp.sqrt(float_input(a)))
        return self.y

    def backward(self, g):
        y = saved(self.y, lambda: self.inputs[0].rsqrt())
        return (g * y * y * y * -0.5,)


class Square(Function):
    def forward(self, a):
        return a * a

    def backward(self, g):
        return (g * self.inputs[0] * 2.0,)


def erfc_array(x):
    """1 - erf(x), computed directly (no cancellation in the tail: erfc(10) = 2.1e-45 in float64)."""
    xp = xp_of(x)
    if xp.__name__.startswith("cupy"):
        import cupyx.scipy.special as sp
        return sp.erfc(x)
    if x.dtype == np.float64 or x.dtype == np.float32:
        host = x.get() if hasattr(x, "get") else x
        return xp.asarray(_erfc64(host).astype(x.dtype, copy=False))
    return (1.0 - erf_array(x)).astype(x.dtype, copy=False)


class Erfc(Function):
    def forward(self, a):
        return erfc_array(float_input(a))

    def backward(self, g):
        x = self.inputs[0]
        return (g * (x * x * -1.0).exp() * -_TWO_OVER_SQRT_PI,)


__all__ = [
    "Acos",
    "Acosh",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Cos",
    "Cosh",
    "Erfc",
    "Exp2",
    "Expm1",
    "Log1p",
    "Log2",
    "Log10",
    "Reciprocal",
    "Rsqrt",
    "Sin",
    "Sinh",
    "Square",
    "Tan",
    "erfc_array",
]
