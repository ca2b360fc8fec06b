"""minigrad.nn: modules with PyTorch's names."""
from . import functional
from .activations import (CELU, ELU, GLU, SELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, LogSigmoid, Mish,
                          ReLU6, SiLU, Softplus, Softsign)
from .attention import MultiheadAttention
from .conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .layers import GELU, Dropout, Embedding, Flatten, Identity, LayerNorm, Linear, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .module import Module, ModuleList, Parameter, Sequential
from .norm import BatchNorm1d, BatchNorm2d, GroupNorm, RMSNorm
from .pooling import AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, MaxPool1d, MaxPool2d, Upsample
from .quantize import QuantizedLinear, dequantize_, load_quantized, quantize_, save_quantized

__all__ = ["functional", "Module", "Parameter", "Sequential", "ModuleList", "Linear", "Embedding", "LayerNorm",
           "Dropout", "MultiheadAttention", "ReLU", "GELU", "Tanh",
           # convolution, pooling, normalisation and the other layers of issue 17
           "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
           "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "Upsample", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "RMSNorm",
           "Flatten", "Identity", "Sigmoid", "Softmax", "LogSoftmax",
           "SiLU", "Mish", "SELU", "ReLU6", "Hardsigmoid", "Hardswish", "LogSigmoid", "Softsign", "Softplus",
           "LeakyReLU", "ELU", "CELU", "Hardtanh", "GLU",
           # weight-only quantization for inference (issue 19)
           "quantize_", "dequantize_", "save_quantized", "load_quantized", "QuantizedLinear"]
