"""Every op of the engine: one Function subclass per op, forward and backward side by side."""
from .elementwise import (Abs, Add, AsType, Clip, Compare, Div, Exp, Log, Maximum, Minimum, Mul, Neg, Pow,
                          PowScalar, Relu, Sigmoid, Sqrt, Sub, Tanh, ToDevice, Where)
from .linalg import MatMul
from .reduce import Max, Mean, Sum
from .shape import BroadcastTo, Concatenate, GetItem, IndexAdd, Reshape, SumTo, Transpose

__all__ = ["Abs", "Add", "AsType", "Clip", "Compare", "Div", "Exp", "Log", "Maximum", "Minimum", "Mul", "Neg",
           "Pow", "PowScalar", "Relu", "Sigmoid", "Sqrt", "Sub", "Tanh", "ToDevice", "Where", "MatMul", "Max",
           "Mean", "Sum", "BroadcastTo", "Concatenate", "GetItem", "IndexAdd", "Reshape", "SumTo", "Transpose"]
