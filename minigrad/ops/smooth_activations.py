"""Activations with exponential pieces, written as ops so that their gradients are exact at every
point and never meet inf·0: softplus (with PyTorch's beta and threshold) and the ELU family
(ELU, SELU and CELU are its parameters, as in PyTorch's elu(alpha, scale, input_scale))."""
from __future__ import annotations

from ..autograd import Function
from ._util import float_input, xp_of


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


class Softplus(Function):
    """log(1 + exp(beta·x)) / beta, and x itself where beta·x > threshold (threshold None: never).

    Forward max(z, 0) + log1p(exp(-|z|)) with z = beta·x: no overflow for any x. Gradient
    sigmoid(beta·x) (1 in the linear region)."""

    def forward(self, a, beta=1.0, threshold=20.0):
        xp = xp_of(a)
        a = float_input(a)
        z = a * beta
        y = (xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z)))) * (1.0 / beta)
        self.beta = beta
        self.linear = None if threshold is None else z > threshold
        return y if self.linear is None else xp.where(self.linear, a, y)

    def backward(self, g):
        from .elementwise import Sigmoid, Where
        x = self.inputs[0]
        s = Sigmoid.apply(x * self.beta)
        if self.linear is not None:
            s = Where.apply(_T(xp_of(x.data).ones((), dtype=x.dtype)), s, cond=self.linear)
        return (g * s,)


class Elu(Function):
    """scale·x for x > 0, scale·alpha·(exp(input_scale·x) - 1) for x <= 0.

    ELU: (alpha, 1, 1); SELU: (1.6732632423543772, 1.0507009873554805, 1); CELU: (alpha, 1, 1/alpha).
    The exponential only ever sees min(x, 0), so a large positive x cannot overflow it."""

    def forward(self, a, alpha=1.0, scale=1.0, input_scale=1.0):
        xp = xp_of(a)
        a = float_input(a)
        self.alpha, self.scale, self.input_scale = alpha, scale, input_scale
        self.pos = a > 0
        neg = xp.expm1(xp.minimum(a, 0) * input_scale) * (scale * alpha)
        return xp.where(self.pos, a * scale, neg)

    def backward(self, g):
        x = self.inputs[0]
        pos = self.pos.astype(x.dtype)
        neg = _T(1 - pos)
        slope_neg = (x * neg * self.input_scale).exp() * (self.scale * self.alpha * self.input_scale) * neg
        return (g * (slope_neg + _T(pos * self.scale)),)


__all__ = ["Elu", "Softplus"]
