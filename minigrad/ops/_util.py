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
