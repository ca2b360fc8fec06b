"""Reductions over a tuple of axes (already normalised by Tensor: sorted, non-negative)."""
from __future__ import annotations

from ..autograd import Function
from ._util import saved, xp_of


def _keep_shape(shape, axis):
    """The shape of the reduction with keepdims=True."""
    return tuple(1 if i in axis else s for i, s in enumerate(shape))


class Sum(Function):
    def forward(self, a, axis, keepdims=False):
        self.shape, self.axis = a.shape, axis
        if a.dtype.itemsize == 2 and a.dtype.kind in "fV":   # half types accumulate in float32 (NumPy
            # sums bfloat16 in bfloat16: 10,000 ones add up to 256)
            return a.sum(axis=axis, keepdims=keepdims, dtype="float32").astype(a.dtype)
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):
        return (g.reshape(_keep_shape(self.shape, self.axis)).broadcast_to(self.shape),)


class Mean(Function):
    def forward(self, a, axis, keepdims=False):
        self.shape, self.axis = a.shape, axis
        n = 1
        for i in axis:
            n *= a.shape[i]
        self.n = n
        if n and a.dtype.itemsize == 2 and a.dtype.kind in "fV":
            return a.mean(axis=axis, keepdims=keepdims, dtype="float32").astype(a.dtype)
        return a.mean(axis=axis, keepdims=keepdims) if n else xp_of(a).zeros(
            _keep_shape(a.shape, axis) if keepdims else tuple(s for i, s in enumerate(a.shape) if i not in axis),
            a.dtype) * float("nan")

    def backward(self, g):
        return ((g * (1.0 / max(self.n, 1))).reshape(_keep_shape(self.shape, self.axis)).broadcast_to(self.shape),)


class Max(Function):
    """max over axes; tied maxima share the gradient evenly (as numpy's amax subgradient in PyTorch)."""
    pick = "max"

    def forward(self, a, axis, keepdims=False):
        if any(a.shape[i] == 0 for i in axis):   # numpy also refuses; other zero-size dims are fine
            raise ValueError(f"{self.pick}: reducing a zero-size axis of shape {a.shape} (axes {axis}) has no "
                             f"{self.pick}imum")
        m = getattr(a, self.pick)(axis=axis, keepdims=True)
        hit = (a == m)
        self.w = hit / hit.sum(axis=axis, keepdims=True)
        self.shape, self.axis = a.shape, axis
        return m if keepdims else m.reshape(tuple(s for i, s in enumerate(a.shape) if i not in axis))

    def backward(self, g):
        from ..tensor import Tensor
        w = Tensor._make(self.w.astype(g.dtype, copy=False))
        return (g.reshape(_keep_shape(self.shape, self.axis)) * w,)


class Min(Max):
    """min over axes, computed directly (never as -max(-x), which wraps for integers and fails for
    bools); ties share the gradient evenly."""
    pick = "min"



def _reduced_shape(shape, axis, keepdims):
    return _keep_shape(shape, axis) if keepdims else tuple(s for i, s in enumerate(shape) if i not in axis)


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


class Prod(Function):
    """Product over axes. Gradient g·y/x where no input is 0; with zeros, g times the product of the
    other elements of the group, built without division from prefix and suffix products (so it
    is exact for any number of zeros, and its own gradient is too)."""

    def forward(self, a, axis, keepdims=False):
        self.shape, self.axis = a.shape, axis
        self.y = a.prod(axis=axis, keepdims=True)
        self.has_zero = bool((a == 0).any())
        return self.y if keepdims else self.y.reshape(_reduced_shape(a.shape, axis, False))

    def backward(self, g):
        x = self.inputs[0]
        g = g.reshape(_keep_shape(self.shape, self.axis))
        if not self.has_zero:
            y = saved(self.y, lambda: Prod.apply(x, axis=self.axis, keepdims=True))
            return (g * y / x,)
        return (g * prod_of_others(x, self.axis),)


def prod_of_others(x, axis):
    """For each element of x (Tensor), the product of the other elements of its group over ``axis``:
    exclusive prefix products times exclusive suffix products along the flattened reduced axes."""
    from .scan import CumProd
    from .shape import Concatenate
    nd = x.ndim
    rest = tuple(i for i in range(nd) if i not in axis)
    perm = rest + tuple(axis)
    xt = x.transpose(perm) if perm != tuple(range(nd)) else x
    lead = xt.shape[:len(rest)]
    z = xt.reshape(lead + (-1,))                                  # (..., n): the group along the last axis
    last = z.ndim - 1
    one = _T(xp_of(x.data).ones(lead + (1,), dtype=x.dtype))
    flip = (Ellipsis, slice(None, None, -1))
    before = Concatenate.apply(one, CumProd.apply(z[..., :-1], axis=last), axis=last)
    after = Concatenate.apply(one, CumProd.apply(z[flip][..., :-1], axis=last), axis=last)[flip]
    others = (before * after).reshape(xt.shape)
    if perm == tuple(range(nd)):
        return others
    inverse = [0] * nd
    for i, p in enumerate(perm):
        inverse[p] = i
    return others.transpose(tuple(inverse))


class Any(Function):
    """Whether any element over the axes is nonzero (bool); no gradient."""
    differentiable = False

    def forward(self, a, axis, keepdims=False):
        return a.any(axis=axis, keepdims=keepdims)


class All(Function):
    """Whether every element over the axes is nonzero (bool); no gradient."""
    differentiable = False

    def forward(self, a, axis, keepdims=False):
        return a.all(axis=axis, keepdims=keepdims)


class L2Norm(Function):
    """sqrt(sum x²) over axes. Gradient g·x/norm, taken as 0 where the norm is 0 (as PyTorch;
    there x is 0 too, so dividing by 1 instead gives that 0 without a NaN)."""

    def forward(self, a, axis, keepdims=False):
        xp = xp_of(a)
        self.shape, self.axis = a.shape, axis
        self.y = xp.sqrt((a * a).sum(axis=axis, keepdims=True))
        return self.y if keepdims else self.y.reshape(_reduced_shape(a.shape, axis, False))

    def backward(self, g):
        x = self.inputs[0]
        g = g.reshape(_keep_shape(self.shape, self.axis))
        y = saved(self.y, lambda: L2Norm.apply(x, axis=self.axis, keepdims=True))
        return (g * x / (y + _T((self.y == 0).astype(x.dtype))),)
