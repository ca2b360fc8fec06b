"""Activation functions beyond relu, gelu, sigmoid and tanh, with PyTorch's names and defaults
(re-exported by minigrad.nn.functional).

Softplus and the ELU family are ops (minigrad/ops/smooth_activations.py: their exponentials must
never see a large positive x); the rest are their formulas in existing differentiable ops.
Gradients at the kinks are PyTorch's: leaky_relu and elu take the negative side's slope at 0;
hardtanh, relu6 and hardsigmoid pass no gradient at their clip points (strictly inside only), and
hardswish takes its outer pieces' slopes (0 and 1) at -3 and 3.
"""
from __future__ import annotations

from ..ops import Elu, Sigmoid, Softplus
from ..tensor import Tensor, _axis

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta·x)) / beta; x itself where beta·x > threshold (as PyTorch)."""
    if beta <= 0:
        raise ValueError(f"softplus: beta must be positive, got {beta}")
    return Softplus.apply(x, beta=float(beta), threshold=float(threshold))


def silu(x: Tensor) -> Tensor:
    """x·sigmoid(x) (also called swish)."""
    return x * Sigmoid.apply(x)


def mish(x: Tensor) -> Tensor:
    """x·tanh(softplus(x))."""
    return x * softplus(x).tanh()


def logsigmoid(x: Tensor) -> Tensor:
    """log(sigmoid(x)) = -softplus(-x), stable for any x (no threshold)."""
    return -Softplus.apply(-x, beta=1.0, threshold=None)


def softsign(x: Tensor) -> Tensor:
    """x / (1 + |x|)."""
    return x / (x.abs() + 1.0)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """x for x > 0, negative_slope·x otherwise (the slope at 0 is negative_slope, as PyTorch)."""
    xp = x._xp
    slope = xp.where(x.data > 0, 1.0, negative_slope).astype(x.dtype if x.dtype.kind == "f" else "float32")
    return x * Tensor._make(slope)


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x for x > 0, alpha·(exp(x) - 1) otherwise."""
    return Elu.apply(x, alpha=float(alpha), scale=1.0, input_scale=1.0)


def selu(x: Tensor) -> Tensor:
    """scale·elu(x, alpha) with the self-normalising constants of Klambauer et al. (2017)."""
    return Elu.apply(x, alpha=_SELU_ALPHA, scale=_SELU_SCALE, input_scale=1.0)


def celu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """max(0, x) + min(0, alpha·(exp(x/alpha) - 1))."""
    if alpha == 0:
        raise ValueError("celu: alpha must not be 0")
    return Elu.apply(x, alpha=float(alpha), scale=1.0, input_scale=1.0 / alpha)


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    """x clipped to [min_val, max_val]; the gradient passes only where min_val < x < max_val."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val {min_val} is above max_val {max_val}")
    return _clip_strict(x, min_val, max_val)


def _clip_strict(x: Tensor, lo, hi) -> Tensor:
    """x.clip(lo, hi) whose gradient is 0 at the bounds themselves (PyTorch's hardtanh), where
    Clip's passes it: x strictly inside, the clipped value (a constant) elsewhere."""
    from ..functions import where
    xp = x._xp
    inside = (x.data > lo) & (x.data < hi)
    return where(inside, x, Tensor._make(xp.clip(x.data, lo, hi)))


def relu6(x: Tensor) -> Tensor:
    """min(max(x, 0), 6), gradient strictly inside (0, 6)."""
    return _clip_strict(x, 0.0, 6.0)


def hardsigmoid(x: Tensor) -> Tensor:
    """relu6(x + 3) / 6: 0 below -3, 1 above 3, linear between (gradient 1/6 strictly inside)."""
    return _clip_strict(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def hardswish(x: Tensor) -> Tensor:
    """x·hardsigmoid(x): 0 below -3, x above 3; gradient x/3 + 1/2 strictly inside (-3, 3)."""
    return x * hardsigmoid(x)


def glu(x: Tensor, axis: int = -1) -> Tensor:
    """a·sigmoid(b), where a and b are the first and second halves of x along ``axis``."""
    axis = _axis(axis, x.ndim, "glu")
    n = x.shape[axis]
    if n % 2:
        raise ValueError(f"glu: axis {axis} of shape {x.shape} has odd size {n}; it must split in halves")
    lead = (slice(None),) * axis
    return x[lead + (slice(0, n // 2),)] * Sigmoid.apply(x[lead + (slice(n // 2, n),)])


__all__ = [
    "celu",
    "elu",
    "glu",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "leaky_relu",
    "logsigmoid",
    "mish",
    "relu6",
    "selu",
    "silu",
    "softplus",
    "softsign",
]
