"""Elementwise tests with boolean results (no gradient): isclose, isnan, isinf, isfinite."""
from __future__ import annotations

from ..autograd import Function
from ._util import xp_of


class IsClose(Function):
    """|a - b| <= atol + rtol·|b| (NumPy's and PyTorch's formula, asymmetric in b); equal infinities
    are close; NaNs are close to each other only with ``equal_nan``."""
    differentiable = False

    def forward(self, a, b, rtol=1e-5, atol=1e-8, equal_nan=False):
        return xp_of(a).isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)


class IsNan(Function):
    differentiable = False

    def forward(self, a):
        return xp_of(a).isnan(a)


class IsInf(Function):
    differentiable = False

    def forward(self, a):
        return xp_of(a).isinf(a)


class IsFinite(Function):
    differentiable = False

    def forward(self, a):
        return xp_of(a).isfinite(a)


__all__ = ["IsClose", "IsFinite", "IsInf", "IsNan"]
