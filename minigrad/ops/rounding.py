"""Piecewise-constant elementwise ops: sign, floor, ceil, round, trunc.

Their derivative is zero wherever it exists, and their gradient is zero everywhere (PyTorch's
convention): a graph through them stays differentiable and passes nothing back. Integer inputs
are already whole numbers: floor, ceil, round and trunc return them unchanged (same dtype, as
PyTorch; NumPy would give float64).
"""
from __future__ import annotations

from ..autograd import Function
from ._util import xp_of, zeros_grad


class _Step(Function):
    ufunc = ""                     # the array module's function of the same meaning

    def forward(self, a):
        if a.dtype.kind in "iub":
            return a.copy()
        return getattr(xp_of(a), self.ufunc)(a)

    def backward(self, g):
        return (zeros_grad(self),)


class Sign(_Step):
    """-1, 0 or 1 (NaN stays NaN); a bool tensor is returned unchanged."""
    ufunc = "sign"

    def forward(self, a):
        if a.dtype.kind in "iu":
            return xp_of(a).sign(a)
        return super().forward(a)


class Floor(_Step):
    ufunc = "floor"


class Ceil(_Step):
    ufunc = "ceil"


class Trunc(_Step):
    """Round toward zero."""
    ufunc = "trunc"


class Round(_Step):
    """Round half to even (NumPy's and PyTorch's rule: round(0.5) = 0, round(1.5) = 2), at ``decimals``."""

    def forward(self, a, decimals=0):
        if a.dtype.kind in "iub" and decimals >= 0:
            return a.copy()
        return xp_of(a).round(a, decimals)


__all__ = ["Ceil", "Floor", "Round", "Sign", "Trunc"]
