"""minigrad.nn: modules with PyTorch's names."""
from . import functional
from .attention import MultiheadAttention
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, ReLU, Tanh
from .module import Module, ModuleList, Parameter, Sequential

__all__ = ["functional", "Module", "Parameter", "Sequential", "ModuleList", "Linear", "Embedding", "LayerNorm",
           "Dropout", "MultiheadAttention", "ReLU", "GELU", "Tanh"]
