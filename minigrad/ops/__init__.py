"""Every op of the engine: one Function subclass per op, forward and backward side by side, its
fast variants declared right below it (minigrad.dispatch chooses among them)."""
from .activations import Gelu
from .attention import Attention
from .elementwise import (Abs, Add, AsType, Clip, Compare, Div, Exp, Log, Maximum, Minimum, Mul, Neg, Pow,
                          PowScalar, Relu, Sigmoid, Sqrt, Sub, Tanh, ToDevice, Where)
from .fused import GeluMLP, QKVAttention
from .linalg import Linear, MatMul
from .normalization import LayerNorm
from .reduce import Max, Mean, Sum
from .shape import BroadcastTo, Concatenate, GetItem, IndexAdd, Reshape, SumTo, Transpose
from .softmax import CrossEntropy, LogSoftmax, LogSumExp, Softmax
from .special import Erf

__all__ = ["Abs", "Add", "AsType", "Clip", "Compare", "Div", "Exp", "Log", "Maximum", "Minimum", "Mul", "Neg",
           "Pow", "PowScalar", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh", "ToDevice", "Where", "MatMul", "Linear",
           "Max", "Mean", "Sum", "BroadcastTo", "Concatenate", "GetItem", "IndexAdd", "Reshape", "SumTo",
           "Transpose", "Gelu", "Softmax", "LogSoftmax", "LogSumExp", "CrossEntropy", "LayerNorm", "Attention",
           "GeluMLP", "QKVAttention", "Erf"]

# convolution, pooling, padding and scatter (the ops behind nn.functional's conv/pool and minigrad.manipulation)
from .conv import Conv, ConvTranspose, Fold, Unfold
from .indexing import Scatter
from .movement import Pad, Roll
from .pooling import AvgPool, MaxPool

__all__ += ["Conv", "ConvTranspose", "Fold", "Unfold", "Scatter", "Pad", "Roll", "AvgPool", "MaxPool"]
