"""Loss functions with PyTorch's names, defaults and reductions (re-exported by nn.functional).

Class scores are on the LAST axis, as everywhere in minigrad (logits (N, C) or (N, ..., C) with
targets (N,) or (N, ...)), not on PyTorch's dim 1. ``reduction`` is "mean" (default), "sum" or
"none"; kl_div also takes "batchmean". Weighted means divide by the sum of the weights of the
counted targets, as PyTorch; a mean over no counted target is NaN.
"""
from __future__ import annotations

from ..backend import check_values
from ..ops import BinaryCrossEntropy, CrossEntropy, LogSoftmax, Softplus
from ..tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name, reduction, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"{name}: reduction must be {', '.join(map(repr, allowed[:-1]))} or {allowed[-1]!r}, "
                         f"got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def _like(t, x: Tensor, name: str, what: str = "target") -> Tensor:
    """``t`` as a Tensor of x's float dtype and device, with x's shape (a Tensor keeps its graph)."""
    t = t if isinstance(t, Tensor) else Tensor(x._xp.asarray(t), dtype=x.dtype, device=x.device)
    if t.shape != x.shape:
        raise ValueError(f"{name}: input shape {x.shape} != {what} shape {t.shape}")
    return t


def _class_targets(name, logits: Tensor, target, ignore_index):
    """(flat int targets, valid mask, safe targets) checked against logits (N, ..., C)."""
    t = target.data if isinstance(target, Tensor) else logits._xp.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices, got {t.dtype}")
    if logits.ndim < 1 or logits.shape[:-1] != t.shape:
        raise ValueError(f"{name}: input {logits.shape} needs a target of shape {logits.shape[:-1]}, got {t.shape}")
    c = logits.shape[-1]
    t = t.reshape(-1)
    valid = t != ignore_index
    safe = logits._xp.where(valid, t, 0)
    bad = (safe < 0) | (safe >= c)
    check_values(bad.any(), lambda: f"{name}: target {int(safe[bad][0])} is out of range for {c} classes",
                 logits.device)                  # on "cuda": read later, with the step's read (no sync here)
    return t, valid, safe


def _class_weights(name, weight, logits: Tensor):
    """The per-class weight array (C,) in the logits' dtype, or None."""
    if weight is None:
        return None
    w = weight.data if isinstance(weight, Tensor) else logits._xp.asarray(weight)
    if w.shape != (logits.shape[-1],):
        raise ValueError(f"{name}: weight shape {w.shape} != ({logits.shape[-1]},), one weight per class")
    return w.astype(logits.dtype, copy=False)


def nll_loss(input: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """-input[..., target]·weight[target] for log-probabilities input (N, ..., C), targets (N, ...);
    targets equal to ``ignore_index`` count for nothing. The mean divides by the summed weights."""
    _check_reduction("nll_loss", reduction)
    _, valid, safe = _class_targets("nll_loss", input, target, ignore_index)
    w = _class_weights("nll_loss", weight, input)
    c = input.shape[-1]
    xp = input._xp
    rows = input.reshape((-1, c))
    row_w = (valid if w is None else w[safe] * valid).astype(input.dtype)            # (N·...,) constants
    picked = rows[xp.arange(rows.shape[0]), safe]
    loss = -picked * Tensor._make(row_w)
    if reduction == "none":
        return loss.reshape(input.shape[:-1])
    if reduction == "sum":
        return loss.sum()
    total = float(row_w.sum())
    return loss.sum() * (1.0 / total if total else float("nan"))


def cross_entropy(logits: Tensor, target, weight=None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits (N, C) or (N, ..., C), class scores on the last axis.

    ``target`` is either class indices (N,) / (N, ...) (``ignore_index`` rows count for nothing), or
    class probabilities shaped like the logits (a float target; ``ignore_index`` does not apply).
    ``weight`` (C,) weighs each class; ``label_smoothing`` e mixes the target with the uniform
    distribution: (1 - e)·target + e/C. Both as PyTorch, including its means: over the summed
    weights of the counted rows for index targets, over the rows for probability targets.
    """
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    t_arr = target.data if isinstance(target, Tensor) else logits._xp.asarray(target)
    t_dtype, t_shape = t_arr.dtype, tuple(t_arr.shape)
    if t_dtype.kind == "f":
        if t_shape != logits.shape:
            raise TypeError(f"cross_entropy: target must hold integer class indices of shape {logits.shape[:-1]}, "
                            f"or class probabilities of shape {logits.shape}; got {t_dtype} of shape {t_shape}")
        return _soft_cross_entropy(logits, target, weight, reduction, label_smoothing)
    if weight is None and label_smoothing == 0.0:
        t, _, _ = _class_targets("cross_entropy", logits, target, ignore_index)
        c = logits.shape[-1]       # the fused op: one pass gives the loss and its gradient
        out = CrossEntropy.apply(logits.reshape((-1, c)), target=t, ignore_index=ignore_index, reduction=reduction)
        return out.reshape(logits.shape[:-1]) if reduction == "none" else out
    logp = LogSoftmax.apply(logits, axis=logits.ndim - 1)
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0.0:
        return nll
    # PyTorch's smoothing term: -sum_c w_c·logp_c per counted row, reduced with nll's denominator
    _, valid, safe = _class_targets("cross_entropy", logits, target, ignore_index)
    w = _class_weights("cross_entropy", weight, logits)
    c = logits.shape[-1]
    rows = logp.reshape((-1, c))
    per_class = rows if w is None else rows * Tensor._make(w)
    smooth = -per_class.sum(axis=1) * Tensor._make(valid.astype(logits.dtype))
    if reduction == "none":
        smooth = smooth.reshape(logits.shape[:-1])
    elif reduction == "sum":
        smooth = smooth.sum()
    else:
        total = float((valid if w is None else w[safe] * valid).sum())
        smooth = smooth.sum() * (1.0 / total if total else float("nan"))
    return nll * (1.0 - label_smoothing) + smooth * (label_smoothing / c)


def _soft_cross_entropy(logits, target, weight, reduction, label_smoothing):
    """-sum_c w_c·p_c·log softmax(logits)_c per row, p the (smoothed) target probabilities."""
    p = _like(target, logits, "cross_entropy")
    c = logits.shape[-1]
    if label_smoothing:
        p = p * (1.0 - label_smoothing) + label_smoothing / c
    w = _class_weights("cross_entropy", weight, logits)
    if w is not None:
        p = p * Tensor._make(w)
    loss = -(p * LogSoftmax.apply(logits, axis=logits.ndim - 1)).sum(axis=-1)
    return _reduce(loss, reduction)


def binary_cross_entropy(input: Tensor, target, weight=None, reduction: str = "mean") -> Tensor:
    """-(t·log p + (1 - t)·log(1 - p)) for probabilities p in [0, 1], each log clamped at -100
    (PyTorch's rule); ``weight`` broadcasts against the elements."""
    _check_reduction("binary_cross_entropy", reduction)
    t = _like(target, input, "binary_cross_entropy")
    if bool(((input.data < 0) | (input.data > 1)).any()):
        raise ValueError("binary_cross_entropy: every input must be a probability in [0, 1]; "
                         "for logits use binary_cross_entropy_with_logits")
    loss = BinaryCrossEntropy.apply(input, t)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target, weight=None, reduction: str = "mean",
                                     pos_weight=None) -> Tensor:
    """binary_cross_entropy(sigmoid(x), t) computed stably from the logits x:
    (1 - t)·x + (1 + (pos_weight - 1)·t)·softplus(-x). ``pos_weight`` weighs the positive term and
    broadcasts against the last (class) axis, as PyTorch."""
    _check_reduction("binary_cross_entropy_with_logits", reduction)
    t = _like(target, input, "binary_cross_entropy_with_logits")
    sp = Softplus.apply(-input, beta=1.0, threshold=None)          # -log sigmoid(x)
    if pos_weight is None:
        loss = (1.0 - t) * input + sp
    else:
        loss = (1.0 - t) * input + ((pos_weight - 1.0) * t + 1.0) * sp
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def l1_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """|input - target| (gradient 0 where they are equal)."""
    _check_reduction("l1_loss", reduction)
    return _reduce((input - _like(target, input, "l1_loss")).abs(), reduction)


def smooth_l1_loss(input: Tensor, target, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5·d²/beta where |d| < beta, |d| - 0.5·beta elsewhere (d = input - target); beta = 0 is l1_loss."""
    _check_reduction("smooth_l1_loss", reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    d = input - _like(target, input, "smooth_l1_loss")
    if beta == 0:
        return _reduce(d.abs(), reduction)
    return _reduce(_quadratic_then_linear(d, beta, 0.5 / beta, 1.0), reduction)


def huber_loss(input: Tensor, target, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """0.5·d² where |d| < delta, delta·(|d| - 0.5·delta) elsewhere: smooth_l1_loss·delta with beta = delta."""
    _check_reduction("huber_loss", reduction)
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    d = input - _like(target, input, "huber_loss")
    return _reduce(_quadratic_then_linear(d, delta, 0.5, delta), reduction)


def _quadratic_then_linear(d, k, quad, lin):
    """quad·d² where |d| < k, lin·(|d| - 0.5·k) elsewhere (both pieces finite, so the where is safe)."""
    from ..functions import where
    inside = d.abs().data < k
    return where(inside, d * d * quad, (d.abs() - 0.5 * k) * lin)


def kl_div(input: Tensor, target, reduction: str = "mean", log_target: bool = False) -> Tensor:
    """Pointwise KL divergence target·(log target - input) for log-probabilities ``input``
    (0 where target = 0); ``log_target``: the target is given as log-probabilities too.
    reduction "batchmean" divides the sum by the batch size input.shape[0] (the true KL divergence
    per sample); "mean" (PyTorch's default) divides by the number of elements."""
    _check_reduction("kl_div", reduction, ("mean", "batchmean", "sum", "none"))
    t = _like(target, input, "kl_div")
    if log_target:
        loss = t.exp() * (t - input)
    else:
        from ..functions import where
        positive = t.data > 0
        loss = t * (where(positive, t, 1.0).log() - input)          # xlogy(t, t) - t·input
    if reduction == "batchmean":
        return loss.sum() * (1.0 / input.shape[0]) if input.ndim else loss.sum()
    return _reduce(loss, reduction)


__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "nll_loss",
    "smooth_l1_loss",
]
