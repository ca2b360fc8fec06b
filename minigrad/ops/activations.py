"""GELU, exact (x Φ(x)) and tanh-approximated, with its fast variants declared below it."""
from __future__ import annotations

import math

import numpy as np

from .. import dispatch
from ..autograd import Function
from ._util import saved, xp_of
from .special import erf, gelu_and_slope, gelu_and_slope_blocked

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normal_cdf_pdf(x):
    """(Φ(x), φ(x)) of the standard normal as Tensor expressions: GELU's pieces, differentiable."""
    return 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0)))), (x * x * -0.5).exp() * _INV_SQRT_2PI


class Gelu(Function):
    """x Φ(x) (approximate="none") or the tanh approximation (approximate="tanh")."""

    def forward(self, x, approximate="none"):
        self.approximate = approximate
        if approximate == "tanh":
            u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
            self.t = xp_of(x).tanh(u)
            return 0.5 * x * (1.0 + self.t)
        y, self.slope = self._gelu_and_slope(x)   # the slope dy/dx comes with y, nearly for free
        return y

    @staticmethod
    def _gelu_and_slope(x):
        return gelu_and_slope(x)

    def backward(self, g):
        x = self.inputs[0]
        if self.approximate == "tanh":
            t = saved(self.t, lambda: (_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)
        cdf, pdf = normal_cdf_pdf(x)
        return (g * (cdf + x * pdf),)

    def backward_arrays(self, g):
        if self.approximate == "tanh":
            x, t = self.inputs[0].data, self.t
            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
            return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du),)
        return (g * self.slope,)          # storing the slope beats recomputing it here (measured)


@Gelu.variant("native")
class GeluNative(Gelu):
    """The exact GELU and its slope in one native pass (kernels/cpu/gelu.cpp)."""

    @staticmethod
    def takes(x, approximate="none"):
        return approximate == "none" and dispatch.cpu_native(x) is not None

    @staticmethod
    def _gelu_and_slope(x):
        return dispatch.cpu_native(x).gelu(x)


@Gelu.variant("numpy")
class GeluBlocked(Gelu):
    """The exact GELU of a float32 NumPy array in cache-sized blocks (when the native library is off)."""

    @staticmethod
    def takes(x, approximate="none"):
        return approximate == "none" and type(x) is np.ndarray and x.dtype == np.float32

    @staticmethod
    def _gelu_and_slope(x):
        return gelu_and_slope_blocked(x)
