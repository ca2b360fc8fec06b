"""Elementwise ops. Binary ops broadcast like NumPy; backward sums grads back to each input's shape.

Dtypes (PyTorch's rule where NumPy would widen to float64): an integer or bool operand meeting a
float one takes the float's dtype (``promote``); true division of integers and float functions
of integers (exp, log, sqrt, tanh, sigmoid) give float32."""
from __future__ import annotations

from ..autograd import Function
from ..backend import is_float, to_device
from ._util import float_input, needs, saved, unbroadcast, xp_of


def promote(a, b):
    """An integer or bool array meeting a float array takes the float's dtype (PyTorch's category
    rule: int64 + float32 is float32 here, where NumPy gives float64); otherwise NumPy's rules."""
    if a.dtype is b.dtype:
        return a, b
    fa, fb = is_float(a.dtype), is_float(b.dtype)
    if fa and not fb:
        return a, b.astype(a.dtype)
    if fb and not fa:
        return a.astype(b.dtype), b
    return a, b


class Add(Function):
    def forward(self, a, b):
        if a.dtype is not b.dtype:
            a, b = promote(a, b)
        return a + b

    def backward(self, g):
        a, b = self.inputs
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(g, b.shape) if b.requires_grad else None)


class Sub(Function):
    def forward(self, a, b):
        if a.dtype is not b.dtype:
            a, b = promote(a, b)
        return a - b

    def backward(self, g):
        a, b = self.inputs
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(-g, b.shape) if b.requires_grad else None)


class Mul(Function):
    def forward(self, a, b):
        if a.dtype is not b.dtype:
            a, b = promote(a, b)
        return a * b

    def backward(self, g):
        a, b = self.inputs
        return (unbroadcast(g * b, a.shape) if a.requires_grad else None,
                unbroadcast(g * a, b.shape) if b.requires_grad else None)


class Div(Function):
    """True division; integers divide as float32."""

    def forward(self, a, b):
        if a.dtype is not b.dtype or not is_float(a.dtype):
            a, b = promote(float_input(a), float_input(b))
        return a / b

    def backward(self, g):
        a, b = self.inputs
        ga = g / b
        return (unbroadcast(ga, a.shape) if a.requires_grad else None,
                unbroadcast(-ga * a / b, b.shape) if b.requires_grad else None)


class Neg(Function):
    def forward(self, a):
        return -a

    def backward(self, g):
        return (-g,)


class PowScalar(Function):
    """x ** p for a Python number p."""

    def forward(self, a, p):
        self.p = p
        return (float_input(a) if isinstance(p, float) else a) ** p

    def backward(self, g):
        (x,), p = self.inputs, self.p
        if p == 0:
            return (g * 0.0,)
        return (g * (p * x ** (p - 1)),)


class Pow(Function):
    """a ** b with both tensors: d/da = b a^(b-1), d/db = a^b log a.

    At a = 0, PyTorch's values: d/da is 0 where b = 0 (not 0·0^-1 = NaN), and d/db is 0 where
    b >= 0 (not 0·log 0 = NaN); b < 0 gives -inf there. Elsewhere the formulas are used as they
    are, so second derivatives hold (also at b = 0 with a != 0)."""

    def forward(self, a, b):
        a, b = promote(a, b)
        return a ** b

    def backward(self, g):
        a, b = self.inputs
        xp = xp_of(a.data)
        one = _T(xp.ones((), dtype=g.dtype))
        ga = gb = None
        if a.requires_grad:
            b1 = Where.apply(one, b, cond=(a.data == 0) & (b.data == 0))   # 1 there: b·a^0 = 0, not 0·inf
            ga = unbroadcast(g * b * a ** (b1 - 1.0), a.shape)
        if b.requires_grad:
            a1 = Where.apply(one, a, cond=(a.data == 0) & (b.data >= 0))   # log 1 = 0 there
            gb = unbroadcast(g * (a ** b) * a1.log(), b.shape)
        return ga, gb


class Exp(Function):
    def forward(self, a):
        self.y = xp_of(a).exp(float_input(a))
        return self.y

    def backward(self, g):
        return (g * saved(self.y, lambda: self.inputs[0].exp()),)


class Log(Function):
    def forward(self, a):
        return xp_of(a).log(float_input(a))

    def backward(self, g):
        return (g / self.inputs[0],)


class Sqrt(Function):
    def forward(self, a):
        self.y = xp_of(a).sqrt(float_input(a))
        return self.y

    def backward(self, g):
        return (g * 0.5 / saved(self.y, lambda: self.inputs[0].sqrt()),)


class Tanh(Function):
    def forward(self, a):
        self.y = xp_of(a).tanh(float_input(a))
        return self.y

    def backward(self, g):
        y = saved(self.y, lambda: self.inputs[0].tanh())
        return (g * (1.0 - y * y),)


class Sigmoid(Function):
    def forward(self, a):
        xp = xp_of(a)
        a = float_input(a)
        # stable for both signs: exp of a non-positive number never overflows
        e = xp.exp(-xp.abs(a))
        self.y = xp.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(a.dtype, copy=False)
        return self.y

    def backward(self, g):
        y = saved(self.y, lambda: self.inputs[0].sigmoid())
        return (g * y * (1.0 - y),)


class Relu(Function):
    def forward(self, a):
        self.mask = a > 0
        return a * self.mask

    def backward(self, g):
        from ..tensor import Tensor
        return (g * Tensor._make(self.mask.astype(g.dtype)),)


class Abs(Function):
    def forward(self, a):
        self.sign = xp_of(a).sign(a)
        return xp_of(a).abs(a)

    def backward(self, g):
        from ..tensor import Tensor
        return (g * Tensor._make(self.sign),)


class Clip(Function):
    """clip(x, lo, hi); the gradient passes where lo <= x <= hi."""

    def forward(self, a, lo=None, hi=None):
        xp = xp_of(a)
        inside = xp.ones(a.shape, dtype=bool)
        if lo is not None:
            inside &= a >= lo
        if hi is not None:
            inside &= a <= hi
        self.inside = inside
        return xp.clip(a, lo, hi)

    def backward(self, g):
        from ..tensor import Tensor
        return (g * Tensor._make(self.inside.astype(g.dtype)),)


class Maximum(Function):
    """Elementwise max; ties split the gradient evenly (as PyTorch does)."""

    def forward(self, a, b):
        a, b = promote(a, b)
        self.wa = (a > b) + 0.5 * (a == b)
        return xp_of(a).maximum(a, b)

    def backward(self, g):
        return _split_grad(self, g, self.wa)


def _split_grad(fn, g, w):
    """The gradients of fn's inputs a and b when the output takes a share w (a constant array,
    broadcast like the output) of a and 1 - w of b: g·w to a, g·(1 - w) to b."""
    from ..tensor import Tensor
    a, b = fn.inputs[0], fn.inputs[1]
    wa = Tensor._make(w.astype(g.dtype))
    return (unbroadcast(g * wa, a.shape) if a.requires_grad else None,
            unbroadcast(g * (1.0 - wa), b.shape) if b.requires_grad else None)


class Minimum(Function):
    def forward(self, a, b):
        a, b = promote(a, b)
        self.wa = (a < b) + 0.5 * (a == b)
        return xp_of(a).minimum(a, b)

    backward = Maximum.backward


class Where(Function):
    """where(cond, a, b); cond is a constant boolean array."""

    def forward(self, a, b, cond):
        self.cond = cond
        a, b = promote(a, b)
        return xp_of(a).where(cond, a, b)

    def backward(self, g):
        return _split_grad(self, g, self.cond)


class Atan2(Function):
    """atan2(a, b): the angle of the point (b, a), in (-pi, pi]. d/da = b/(a²+b²), d/db = -a/(a²+b²)."""

    def forward(self, a, b):
        a, b = promote(float_input(a), float_input(b))
        return xp_of(a).arctan2(a, b)

    def backward(self, g):
        a, b = self.inputs
        r = g / (a * a + b * b)
        return (unbroadcast(r * b, a.shape) if a.requires_grad else None,
                unbroadcast(-r * a, b.shape) if b.requires_grad else None)


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


class Compare(Function):
    """<, <=, >, >=, == : boolean result, no gradient."""
    differentiable = False

    def forward(self, a, b, op):
        return getattr(xp_of(a), op)(a, b)


class AsType(Function):
    def forward(self, a, dtype):
        self.src = a.dtype
        return a.astype(dtype)

    def backward(self, g):
        return (g.astype(self.src),) if is_float(self.src) else (None,)


class ToDevice(Function):
    def forward(self, a, device):
        from ..backend import device_of
        self.src = device_of(a)
        return to_device(a, device)

    def backward(self, g):
        return (g.to(self.src),)


__all__ = ["Add", "Sub", "Mul", "Div", "Neg", "PowScalar", "Pow", "Exp", "Log", "Sqrt", "Tanh", "Sigmoid", "Relu",
           "Abs", "Clip", "Maximum", "Minimum", "Where", "Atan2", "Compare", "AsType", "ToDevice", "needs", "promote"]
