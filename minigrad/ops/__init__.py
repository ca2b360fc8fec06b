"""Every op of the engine: one Function subclass per op, forward and backward side by side, its
fast variants declared right below it (minigrad.dispatch chooses among them)."""
from .activations import Gelu
from .attention import Attention
from .elementwise import (Abs, Add, AsType, Atan2, Clip, Compare, Div, Exp, Log, Maximum, Minimum, Mul, Neg, Pow,
                          PowScalar, Relu, Sigmoid, Sqrt, Sub, Tanh, ToDevice, Where)
from .fused import GeluMLP, QKVAttention
from .linalg import Linear, MatMul
from .normalization import LayerNorm
from .reduce import Max, Mean, Min, Sum
from .shape import BroadcastTo, Concatenate, GetItem, IndexAdd, Reshape, SumTo, Transpose
from .softmax import CrossEntropy, LogSoftmax, LogSumExp, Softmax
from .special import Erf
# issue 17's math ops
from .integer import (BitwiseAnd, BitwiseNot, BitwiseOr, BitwiseXor, FloorDivide, Fmod, LeftShift, Remainder,
                      RightShift)
from .losses import BinaryCrossEntropy
from .order import ArgMax, ArgMin, ArgSort, PutAlong, TakeAlong, argsort_array
from .predicates import IsClose, IsFinite, IsInf, IsNan
from .reduce import All, Any, L2Norm, Prod
from .rounding import Ceil, Floor, Round, Sign, Trunc
from .scan import CumProd, CumSum, LogCumSumExp
from .smooth_activations import Elu, Softplus
from .unary import (Acos, Acosh, Asin, Asinh, Atan, Atanh, Cos, Cosh, Erfc, Exp2, Expm1, Log1p, Log2, Log10,
                    Reciprocal, Rsqrt, Sin, Sinh, Square, Tan)

__all__ = ["Abs", "Add", "AsType", "Clip", "Compare", "Div", "Exp", "Log", "Maximum", "Minimum", "Mul", "Neg",
           "Pow", "PowScalar", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh", "ToDevice", "Where", "MatMul", "Linear",
           "Max", "Mean", "Sum", "BroadcastTo", "Concatenate", "GetItem", "IndexAdd", "Reshape", "SumTo",
           "Transpose", "Gelu", "Softmax", "LogSoftmax", "LogSumExp", "CrossEntropy", "LayerNorm", "Attention",
           "GeluMLP", "QKVAttention", "Erf",
           # issue 17's math ops
           "Atan2", "Min", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "FloorDivide", "Fmod",
           "LeftShift", "Remainder", "RightShift", "BinaryCrossEntropy", "ArgMax", "ArgMin", "ArgSort", "PutAlong",
           "TakeAlong", "argsort_array", "IsClose", "IsFinite", "IsInf", "IsNan", "All", "Any", "L2Norm", "Prod",
           "Ceil", "Floor", "Round", "Sign", "Trunc", "CumProd", "CumSum", "LogCumSumExp", "Elu", "Softplus",
           "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cos", "Cosh", "Erfc", "Exp2", "Expm1", "Log1p",
           "Log2", "Log10", "Reciprocal", "Rsqrt", "Sin", "Sinh", "Square", "Tan"]

# convolution, pooling, padding and scatter (the ops behind nn.functional's conv/pool and minigrad.manipulation)
from .conv import Conv, ConvTranspose, Fold, Unfold
from .indexing import Scatter
from .movement import Pad, Roll
from .pooling import AvgPool, MaxPool

__all__ += ["Conv", "ConvTranspose", "Fold", "Unfold", "Scatter", "Pad", "Roll", "AvgPool", "MaxPool"]
