"""Scans along one axis (already normalised by the caller: a non-negative int): cumsum, cumprod,
logcumsumexp. Each backward is a scan in Tensor ops, so second derivatives hold.

Half types (float16, bfloat16) are scanned in float32 and each result rounded once, as Sum and
Mean reduce them: NumPy scans them in their own type, rounding every partial sum (a bfloat16
cumsum of ones stops at 256), so the error would grow with the length of the axis.
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, is_grad_enabled
from ._util import float_input, saved, xp_of


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


def _flip(a, axis):
    return a[(slice(None),) * axis + (slice(None, None, -1),)]


def _wide(a):
    """(a as float32 if it is a half type else a, the dtype to round the scan's result to or None)."""
    if a.dtype.itemsize == 2 and (a.dtype.kind == "f" or a.dtype.name == "bfloat16"):
        return a.astype(np.float32), a.dtype
    return a, None


def _narrow(y, dtype):
    return y if dtype is None else y.astype(dtype)


def _where(cond, a, b):
    """where(cond, a, b) for a constant boolean array ``cond`` and Tensors a, b (gradient to both)."""
    from .elementwise import Where
    return Where.apply(a, b, cond=cond)


class CumSum(Function):
    """y_i = sum_{j<=i} x_j along ``axis`` (``reverse``: sum_{j>=i}). The adjoint of a cumsum is
    the reverse cumsum of the gradient, and vice versa."""

    def forward(self, a, axis, reverse=False):
        self.axis, self.reverse = axis, reverse
        xp = xp_of(a)
        a, half = _wide(a)
        if not reverse:
            return _narrow(xp.cumsum(a, axis=axis), half)
        return _narrow(xp.ascontiguousarray(_flip(xp.cumsum(_flip(a, axis), axis=axis), axis)), half)

    def backward(self, g):
        return (CumSum.apply(g, axis=self.axis, reverse=not self.reverse),)


class CumProd(Function):
    """y_i = prod_{j<=i} x_j along ``axis``.

    Gradient dx_j = sum_{i>=j} g_i prod_{k<=i, k!=j} x_k. Without zeros that is
    revcumsum(g·y)_j / x_j. With zeros, let z be a slice's first zero: for j < z the same formula
    holds (every y_i with i >= z is 0); for j = z it is revcumsum(g·y')_z, y' the cumprod with
    x_z replaced by 1; for j > z it is 0 (every product holds x_z). No division by zero anywhere.
    That O(n) value is right, but not its derivative (dx_j for j > z is 0 yet depends on x_z), so
    under create_graph a zero input takes the O(n²) formula instead, as PyTorch does.
    """

    def forward(self, a, axis):
        xp = xp_of(a)
        self.axis = axis
        wide, half = _wide(a)
        self.y = _narrow(xp.cumprod(wide, axis=axis), half)
        zero = a == 0
        self.has_zero = bool(zero.any())
        if self.has_zero:
            count = xp.cumsum(zero, axis=axis)          # zeros seen so far along the axis
            self.before = count == 0                    # j < z
            self.first = zero & (count == 1)            # j = z
        return self.y

    def backward(self, g):
        x, ax = self.inputs[0], self.axis
        y = saved(self.y, lambda: CumProd.apply(x, axis=ax))
        if not self.has_zero:
            return (CumSum.apply(g * y, axis=ax, reverse=True) / x,)
        if is_grad_enabled():
            return (_cumprod_grad_quadratic(x, g, ax),)
        xp = xp_of(x.data)
        one = _T(xp.ones((), dtype=x.dtype))
        zero = _T(xp.zeros((), dtype=x.dtype))
        g_before = CumSum.apply(g * y, axis=ax, reverse=True) / _where(self.before, x, one)
        y_skip = CumProd.apply(_where(self.first, one, x), axis=ax)       # x_z replaced by 1
        g_first = CumSum.apply(g * y_skip, axis=ax, reverse=True)
        return (_where(self.before, g_before, _where(self.first, g_first, zero)),)


def _cumprod_grad_quadratic(x, g, ax):
    """dx_j = E_j · sum_{i>=j} g_i P[j, i] with E_j = prod_{k<j} x_k and P[j, i] = prod_{j<k<=i} x_k,
    built from cumprods of an (n, n) matrix per slice: no division, differentiable at zeros."""
    from .shape import Concatenate
    last = x.ndim - 1
    xl, gl = (x, g) if ax == last else (x.swapaxes(ax, last), g.swapaxes(ax, last))
    xp = xp_of(x.data)
    n = xl.shape[-1]
    one = _T(xp.ones((), dtype=x.dtype))
    later = xp.triu(xp.ones((n, n), dtype=bool), 1)                     # [j, k]: k > j
    p = CumProd.apply(_where(later, xl.expand_dims(-2), one), axis=last + 1)   # (..., n, n): P[j, i] for i >= j
    s = (p * gl.expand_dims(-2) * _T(xp.triu(xp.ones((n, n), dtype=x.dtype)))).sum(axis=-1)   # (..., n)
    before = Concatenate.apply(_T(xp.ones(xl.shape[:-1] + (1,), dtype=x.dtype)),
                               CumProd.apply(xl[..., :-1], axis=last), axis=last)   # E_j
    dx = before * s
    return dx if ax == last else dx.swapaxes(ax, last)


def logcumsumexp_array(a, axis, reverse=False):
    """log(cumsum(exp(a))) along ``axis`` without overflow or underflow: a log-depth
    (Hillis-Steele) scan of logaddexp, the same elementwise code on every array module."""
    xp = xp_of(a)
    y = _flip(a, axis).copy() if reverse else a.copy()
    n = y.shape[axis]
    lead = (slice(None),) * axis
    s = 1
    while s < n:                     # after this step each y_i combines x_{i-2s+1} .. x_i
        y[lead + (slice(s, None),)] = xp.logaddexp(y[lead + (slice(s, None),)], y[lead + (slice(None, n - s),)])
        s *= 2
    return xp.ascontiguousarray(_flip(y, axis)) if reverse else y


class LogCumSumExp(Function):
    """y_i = log sum_{j<=i} exp(x_j) along ``axis`` (``reverse``: j >= i).

    Gradient dx_j = sum_{i>=j} g_i exp(x_j - y_i). As in PyTorch it is summed in log space, split
    by the sign of g: dx = exp(x + R(log g⁺ - y)) - exp(x + R(log g⁻ - y)), R the logcumsumexp
    in the opposite direction; the masked-out entries take a very negative finite value (not
    -inf), so neither this gradient nor its own gradient meets inf - inf.
    """

    def forward(self, a, axis, reverse=False):
        self.axis, self.reverse = axis, reverse
        a, half = _wide(float_input(a))
        self.y = _narrow(logcumsumexp_array(a, axis, reverse), half)
        return self.y

    def backward(self, g):
        x, ax, rev = self.inputs[0], self.axis, self.reverse
        y = saved(self.y, lambda: LogCumSumExp.apply(x, axis=ax, reverse=rev))
        xp = xp_of(g.data)
        pos, neg = g.data > 0, g.data < 0
        one = _T(xp.ones((), dtype=g.dtype))
        floor = _T(xp.asarray(np.finfo(g.dtype).min / 4, dtype=g.dtype))
        log_abs_g = _where(pos | neg, g.abs(), one).log() - y
        r_pos = LogCumSumExp.apply(_where(pos, log_abs_g, floor), axis=ax, reverse=not rev)
        r_neg = LogCumSumExp.apply(_where(neg, log_abs_g, floor), axis=ax, reverse=not rev)
        return ((x + r_pos).exp() - (x + r_neg).exp(),)


__all__ = ["CumProd", "CumSum", "LogCumSumExp", "logcumsumexp_array"]
