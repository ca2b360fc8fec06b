"""Small helpers shared by the op modules."""
from __future__ import annotations

from ..autograd import is_grad_enabled
from ..backend import get_array_module


def xp_of(a):
    return get_array_module(a)


def unbroadcast(g, shape):
    """Sum a gradient (Tensor) back to ``shape`` after NumPy broadcasting."""
    if g.shape == tuple(shape):
        return g
    from .shape import SumTo
    return SumTo.apply(g, shape=tuple(shape))


def saved(array, recompute):
    """An op's saved output as a Tensor for backward.

    First-order backward (grad mode off) uses the saved array as a constant. With
    create_graph the value must be a differentiable function of the inputs, so it is
    recomputed from them by ``recompute()`` (a Tensor expression)."""
    if is_grad_enabled():
        return recompute()
    from ..tensor import Tensor
    return Tensor._make(array)


def needs(fn, i):
    """Whether input i of this op wants a gradient."""
    return fn.inputs[i].requires_grad


def float_input(a):
    """An integer or bool array as float32 (minigrad's default float, as in PyTorch) for ops whose
    result is a float (sin, exp, true division ...); a float array as it is."""
    return a if a.dtype.kind in "fc" or a.dtype.name == "bfloat16" else a.astype("float32")


def zeros_grad(fn, i=0):
    """A zero gradient (a fresh constant Tensor) shaped and typed like input i of ``fn``: the
    gradient of piecewise-constant ops (rounding, floor division), as in PyTorch."""
    from ..tensor import Tensor
    t = fn.inputs[i]
    return Tensor._make(xp_of(t.data).zeros(t.shape, dtype=t.dtype))
