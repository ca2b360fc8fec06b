"""Convolution layers with PyTorch's names, shapes and default initialisation."""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .module import Module, Parameter

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvNd(Module):
    """weight (out_channels, in_channels / groups, *kernel_size), bias (out_channels,), both
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups · ∏kernel_size (PyTorch's
    default). padding_mode other than "zeros" pads with F.pad first."""

    nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", dtype=np.float32, rng=None):
        super().__init__()
        name = type(self).__name__
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels {in_channels} and out_channels {out_channels} must be divisible "
                             f"by groups {groups}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {', '.join(_PADDING_MODES)}, got {padding_mode!r}")
        rng = rng if rng is not None else np.random.default_rng()
        self.kernel_size = F._ntuple(kernel_size, self.nd, f"{name} kernel_size", 1)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.stride, self.padding, self.dilation, self.padding_mode = stride, padding, dilation, padding_mode
        fan_in = in_channels // groups * math.prod(self.kernel_size)
        b = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        self.weight = Parameter(rng.uniform(-b, b, (out_channels, in_channels // groups) + self.kernel_size)
                                .astype(dtype))
        self.bias = Parameter(rng.uniform(-b, b, (out_channels,)).astype(dtype)) if bias else None

    def forward(self, x):
        conv = F.conv1d if self.nd == 1 else F.conv2d
        if self.padding_mode == "zeros":
            return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return conv(F.pad(x, self._explicit_pads(), self.padding_mode), self.weight, self.bias, self.stride, 0,
                    self.dilation, self.groups)

    def _explicit_pads(self):
        """The padding as F.pad's tuple (last dim first)."""
        dil = F._ntuple(self.dilation, self.nd, "dilation", 1)
        if self.padding == "same":
            per = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(self.kernel_size, dil)]
        elif self.padding == "valid":
            per = [(0, 0)] * self.nd
        else:
            per = [(p, p) for p in F._ntuple(self.padding, self.nd, "padding")]
        return tuple(v for lo_hi in reversed(per) for v in lo_hi)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv1d(_ConvNd):
    """x (N, C_in, L) -> (N, C_out, L_out); see F.conv1d."""
    nd = 1


class Conv2d(_ConvNd):
    """x (N, C_in, H, W) -> (N, C_out, H_out, W_out); see F.conv2d."""
    nd = 2


class _ConvTransposeNd(Module):
    """weight (in_channels, out_channels / groups, *kernel_size), bias (out_channels,), both
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = out_channels / groups · ∏kernel_size (PyTorch's)."""

    nd = 0

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, dtype=np.float32, rng=None):
        super().__init__()
        name = type(self).__name__
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: in_channels {in_channels} and out_channels {out_channels} must be divisible "
                             f"by groups {groups}")
        rng = rng if rng is not None else np.random.default_rng()
        self.kernel_size = F._ntuple(kernel_size, self.nd, f"{name} kernel_size", 1)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.stride, self.padding, self.output_padding, self.dilation = stride, padding, output_padding, dilation
        fan_in = out_channels // groups * math.prod(self.kernel_size)
        b = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        self.weight = Parameter(rng.uniform(-b, b, (in_channels, out_channels // groups) + self.kernel_size)
                                .astype(dtype))
        self.bias = Parameter(rng.uniform(-b, b, (out_channels,)).astype(dtype)) if bias else None

    def forward(self, x):
        conv = F.conv_transpose1d if self.nd == 1 else F.conv_transpose2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.output_padding, self.groups,
                    self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}" + (f", output_padding={self.output_padding}" if self.output_padding else ""))


class ConvTranspose1d(_ConvTransposeNd):
    """x (N, C_in, L) -> (N, C_out, L_out); see F.conv_transpose1d."""
    nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """x (N, C_in, H, W) -> (N, C_out, H_out, W_out); see F.conv_transpose2d."""
    nd = 2
