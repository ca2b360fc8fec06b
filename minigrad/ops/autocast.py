"""Autocast's rounding, the engine side of minigrad.amp (see its docstring): ``RoundTo`` and
``autocast_apply``, which Function.apply calls for ops in dispatch's autocast lists while
autocast is on. A "half" op whose ``autocast_half_storage(inputs, kwargs, half)`` says a kernel
variant takes the half type (attention on "cuda", or emulated) gets real half arrays instead."""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import is_float, round_to_half


class RoundTo(Function):
    """x (float32) -> its values rounded to the half type ``dtype``, still float32; the gradient
    is rounded the same way (straight through the rounding, as a cast's gradient)."""

    def forward(self, x, dtype):
        self.dtype = dtype
        return round_to_half(x, dtype)

    def backward(self, g):
        return (RoundTo.apply(g, dtype=self.dtype),)

    def backward_arrays(self, g):
        return (round_to_half(g, self.dtype),)


def autocast_apply(cls, inputs, kwargs):
    """``cls.apply(*inputs, **kwargs)`` under autocast's policy for ``cls`` (see the module doc)."""
    from ..tensor import Tensor
    half = dispatch._autocast
    policy = dispatch.autocast_policy(cls)
    dispatch._autocast = None                 # the op and the roundings themselves run plainly
    try:
        if policy == "float32":
            ins = [t.astype(np.float32) if t.dtype.itemsize == 2 and is_float(t.dtype) else t for t in inputs]
            return cls.apply(*ins, **kwargs)
        half_storage = getattr(cls, "autocast_half_storage", None)
        if half_storage is not None and all(isinstance(t, Tensor) and is_float(t.dtype) for t in inputs) \
                and half_storage(inputs, kwargs, half):   # a kernel takes half arrays: hand it them
            return cls.apply(*(t.astype(half) for t in inputs), **kwargs).astype(np.float32)
        ins = []
        for t in inputs:
            if isinstance(t, Tensor) and is_float(t.dtype):
                if t.dtype != np.float32:       # a real half (or float64) tensor: compute in float32
                    t = t.astype(np.float32)
                t = RoundTo.apply(t, dtype=half)
            ins.append(t)
        return RoundTo.apply(cls.apply(*ins, **kwargs), dtype=half)
    finally:
        dispatch._autocast = half
