"""Loss ops whose gradient needs more care than their formula's composition would give."""
from __future__ import annotations

import numpy as np

from ..autograd import Function
from ._util import saved, unbroadcast, xp_of

_LOG_FLOOR = -100.0     # PyTorch clamps each log at -100, so p = 0 or 1 gives a finite loss
_EPS = 1e-12            # and divides the gradient by max(p(1 - p), 1e-12)


class BinaryCrossEntropy(Function):
    """Elementwise -(t·log p + (1 - t)·log(1 - p)), each log clamped at -100 (PyTorch's rule).

    Written as an op because composing it would give 0·inf = NaN gradients at p = 0 or 1.
    Gradients (PyTorch's): d/dp = (p - t) / max(p(1 - p), 1e-12); d/dt = log(1 - p) - log p,
    each log clamped as in the forward."""

    def forward(self, p, t):
        xp = xp_of(p)
        with np.errstate(divide="ignore"):                # log(0) = -inf, then clamped
            self.log_p = xp.maximum(xp.log(p), _LOG_FLOOR)
            self.log_1mp = xp.maximum(xp.log1p(-p), _LOG_FLOOR)
        return -(t * self.log_p + (1 - t) * self.log_1mp)

    def backward(self, g):
        p, t = self.inputs
        gp = gt = None
        if p.requires_grad:
            gp = unbroadcast(g * (p - t) / (p * (1.0 - p)).clip(_EPS, None), p.shape)
        if t.requires_grad:
            dt = saved(self.log_1mp - self.log_p,
                       lambda: (-p).log1p().clip(_LOG_FLOOR, None) - p.log().clip(_LOG_FLOOR, None))
            gt = unbroadcast(g * dt, t.shape)
        return gp, gt


__all__ = ["BinaryCrossEntropy"]
