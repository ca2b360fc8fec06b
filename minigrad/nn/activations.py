"""The activation functions of minigrad.nn.functional as modules, with PyTorch's names and arguments."""
from __future__ import annotations

from . import activation_functions as AF
from .module import Module


class _Activation(Module):
    """forward(x) = fn(x, **the constructor's arguments)."""
    fn = None

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return type(self).fn(x, **self.kwargs)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


class SiLU(_Activation):
    fn = staticmethod(AF.silu)


class Mish(_Activation):
    fn = staticmethod(AF.mish)


class SELU(_Activation):
    fn = staticmethod(AF.selu)


class ReLU6(_Activation):
    fn = staticmethod(AF.relu6)


class Hardsigmoid(_Activation):
    fn = staticmethod(AF.hardsigmoid)


class Hardswish(_Activation):
    fn = staticmethod(AF.hardswish)


class LogSigmoid(_Activation):
    fn = staticmethod(AF.logsigmoid)


class Softsign(_Activation):
    fn = staticmethod(AF.softsign)


class Softplus(_Activation):
    fn = staticmethod(AF.softplus)

    def __init__(self, beta=1.0, threshold=20.0):
        super().__init__(beta=beta, threshold=threshold)


class LeakyReLU(_Activation):
    fn = staticmethod(AF.leaky_relu)

    def __init__(self, negative_slope=0.01):
        super().__init__(negative_slope=negative_slope)


class ELU(_Activation):
    fn = staticmethod(AF.elu)

    def __init__(self, alpha=1.0):
        super().__init__(alpha=alpha)


class CELU(_Activation):
    fn = staticmethod(AF.celu)

    def __init__(self, alpha=1.0):
        super().__init__(alpha=alpha)


class Hardtanh(_Activation):
    fn = staticmethod(AF.hardtanh)

    def __init__(self, min_val=-1.0, max_val=1.0):
        super().__init__(min_val=min_val, max_val=max_val)


class GLU(_Activation):
    """Halves along ``dim`` (PyTorch's name for the axis): a * sigmoid(b)."""
    fn = staticmethod(AF.glu)

    def __init__(self, dim=-1):
        super().__init__(axis=dim)


__all__ = ["SiLU", "Mish", "SELU", "ReLU6", "Hardsigmoid", "Hardswish", "LogSigmoid", "Softsign", "Softplus",
           "LeakyReLU", "ELU", "CELU", "Hardtanh", "GLU"]
