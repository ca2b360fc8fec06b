"""The softmax family: softmax, log_softmax, logsumexp and the cross-entropy loss.

Every one is max-subtracted (logsumexp-based), so large logits never overflow. Each backward is a
Tensor expression over ``saved(...)`` values: constants in a first-order backward, recomputed
differentiably under create_graph, so second derivatives hold.
"""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..autograd import Function
from ..backend import check_values, device_of, fold_deferred_checks, raise_deferred_checks
from ._util import saved, xp_of


def _T(a):
    from ..tensor import Tensor
    return Tensor._make(a)


def lse(x, axis):
    """logsumexp over ``axis`` with keepdims, max-subtracted; rows of all -inf give -inf."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype, copy=False)
    with np.errstate(divide="ignore"):
        return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def forward(self, x, axis=-1):
        xp = xp_of(x)
        self.axis = axis
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        self.y = e
        return e

    def backward(self, g):
        y = saved(self.y, lambda: Softmax.apply(self.inputs[0], axis=self.axis))
        gy = g * y
        return (gy - y * gy.sum(axis=self.axis, keepdims=True),)


class LogSoftmax(Function):
    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = x - lse(x, axis)
        return self.y

    def backward(self, g):
        p = saved(self.y, lambda: LogSoftmax.apply(self.inputs[0], axis=self.axis)).exp()   # softmax
        return (g - p * g.sum(axis=self.axis, keepdims=True),)


class LogSumExp(Function):
    def forward(self, x, axis, keepdims=False):
        self.axis, self.keepdims = axis, keepdims
        out = lse(x, axis)
        self.p = xp_of(x).exp(x - out)
        return out if keepdims else out.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axis))

    def backward(self, g):
        x = self.inputs[0]
        p = saved(self.p, lambda: Softmax.apply(x, axis=self.axis) if len(self.axis) == 1
                  else (x - LogSumExp.apply(x, axis=self.axis, keepdims=True)).exp())
        if not self.keepdims:
            g = g.reshape(tuple(1 if i in self.axis else s for i, s in enumerate(x.shape)))
        return (g * p,)


class CrossEntropy(Function):
    """Mean (or sum, or per-row) of -log softmax(logits)[target] over rows whose target != ignore_index.

    logits (N, C) float, target (N,) int. Stable: computed from logsumexp. The per-row work is
    ``_rows`` (the reference keeps p = softmax(logits); the native variant keeps d = p - onehot).
    On a device nothing is read back: the target check is filed (backend.check_values), the mean's
    1/n stays on the device, and the loss is NaN when a filed check of this step failed (its error
    is raised when the checks are read: backend.raise_deferred_checks, to_host).
    """

    def forward(self, logits, target, ignore_index=-100, reduction="mean"):
        xp = xp_of(logits)
        c = logits.shape[1]
        valid = target != ignore_index
        safe_t = xp.where(valid, target, 0)
        out_of_range = (safe_t < 0) | (safe_t >= c)
        device = device_of(logits)

        def message():
            return f"cross_entropy: target {int(safe_t[out_of_range][0])} is out of range for {c} classes"
        check_values(out_of_range.any(), message, device)    # on a device: read later, with the step's read
        self.valid, self.safe_t, self.reduction = valid, safe_t, reduction
        # a mean over no rows is NaN, as in PyTorch (every target == ignore_index)
        if reduction != "mean":
            self.scale = 1.0
        elif device == "cuda":            # on the device (no read): 1/n in float64, as the host's Python float
            n_valid = valid.sum()
            self.scale = xp.where(n_valid > 0, 1.0 / xp.maximum(n_valid, 1), np.nan)
        else:
            n_valid = int(valid.sum())
            self.scale = 1.0 / n_valid if n_valid else float("nan")
        self.p = self.d = None
        try:
            nll = self._rows(logits, target, ignore_index)    # (N,), 0 on ignored rows
        except IndexError:
            raise_deferred_checks()       # failing anyway: the filed target check says it best
            raise
        if reduction == "none":
            out = nll
        else:
            out = nll.sum()
            if reduction == "mean":       # a device scale rounds to the loss dtype first, as a Python float does
                out = out * (self.scale if device != "cuda" else self.scale.astype(out.dtype))
        failed = fold_deferred_checks() if device == "cuda" else None
        return out if failed is None else xp.where(failed, xp.asarray(np.nan, dtype=out.dtype), out)

    def _rows(self, logits, target, ignore_index):
        """Per-row nll; keeps p = softmax(logits) for the backward."""
        nll, self.p = self._nll(logits, self.safe_t, self.valid)
        return nll

    @staticmethod
    def _nll(logits, safe_t, valid):
        """(per-row nll, softmax(logits)) on arrays."""
        xp = xp_of(logits)
        m = logits.max(axis=1, keepdims=True)
        if device_of(logits) == "cuda":    # no read: the one-pass path, a non-finite max taken as 0 (as lse does)
            m = xp.where(xp.isfinite(m), m, 0).astype(logits.dtype, copy=False)
            e = xp.exp(logits - m)         # a row holding +inf or NaN (its nll is not finite) gets NaN in p
            den = e.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                row_lse = (m + xp.log(den))[:, 0]
                e /= den
            p = e
        elif bool(xp.isfinite(m).all()):   # one exp pass gives both the softmax and its logsumexp
            e = xp.exp(logits - m)
            den = e.sum(axis=1, keepdims=True)
            e /= den
            p, row_lse = e, (m + xp.log(den))[:, 0]
        else:                              # rows of all -inf (or inf, NaN): the careful path
            row_lse = lse(logits, 1)[:, 0]
            p = xp.exp(logits - row_lse[:, None])
        return (row_lse - logits[xp.arange(logits.shape[0]), safe_t]) * valid, p

    def backward(self, g):
        logits = self.inputs[0]
        xp = xp_of(logits.data)
        p = saved(self.p, lambda: Softmax.apply(logits, axis=1))
        onehot = xp.zeros(logits.shape, dtype=logits.dtype)
        onehot[xp.arange(logits.shape[0]), self.safe_t] = 1
        w = _T((self.valid * self.scale).astype(logits.dtype)[:, None])
        w = w * (g.reshape((-1, 1)) if self.reduction == "none" else g)
        return ((p - _T(onehot)) * w,)

    def backward_arrays(self, g):
        """(p - onehot) · w on one array, w = the row weight (valid / n, or 1) times g."""
        w = (self.valid * self.scale).astype(self.inputs[0].dtype)[:, None]
        w = w * (g.reshape(-1, 1) if self.reduction == "none" else g)
        if self.d is not None:
            return (self.d * w,)
        d = self.p.copy()
        d[xp_of(d).arange(d.shape[0]), self.safe_t] -= 1
        d *= w
        return (d,)


@CrossEntropy.variant("native")
class CrossEntropyNative(CrossEntropy):
    """Each row's nll and its gradient softmax − onehot in one native pass (kernels/cpu/fast_cpu.cpp)."""

    @staticmethod
    def takes(logits, target, ignore_index=-100, reduction="mean"):
        return dispatch.cpu_native(logits) is not None

    def _rows(self, logits, target, ignore_index):
        res = dispatch.cpu_native(logits).cross_entropy(logits, target, ignore_index)
        if res is None:                    # a row whose max is not finite: the reference's careful path
            return super()._rows(logits, target, ignore_index)
        nll, self.d = res
        return nll
