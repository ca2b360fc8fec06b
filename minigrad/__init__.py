"""minigrad: a small reverse-mode autograd engine over NumPy (CPU) and CuPy (GPU) arrays."""
from . import backend, dispatch
from .autograd import detect_anomaly, enable_grad, grad, is_grad_enabled, no_grad
from .functions import concatenate, maximum, minimum, ones, split, stack, tensor, where, zeros
from .gradient_check import GradcheckError, gradcheck, gradgradcheck
from .dispatch import autocast, get_impl, impl, set_impl
from .tensor import AxisError, Tensor
# issue 17's math: minigrad.sin, atan2, isclose, cumsum, sort, topk, prod, norm, ... (functions.MATH)
from .functions import (abs, acos, acosh, all, any, arccos, arccosh, arcsin, arcsinh, arctan, arctan2,
                        arctanh, argmax, argmin, argsort, asin, asinh, atan, atan2, atanh, bitwise_and,
                        bitwise_not, bitwise_or, bitwise_xor, ceil, cos, cosh, cumprod, cumsum, erf, erfc,
                        exp, exp2, expm1, floor, floor_divide, fmod, isclose, isfinite, isinf, isnan,
                        left_shift, log, log10, log1p, log2, logcumsumexp, norm, prod, reciprocal, remainder,
                        right_shift, round, rsqrt, sign, sin, sinh, sort, sqrt, square, std, tan, topk, trunc,
                        var)
# NumPy-named layout and indexing (minigrad/manipulation.py; also Tensor methods)
from .manipulation import (diagonal, flip, gather, index_select, masked_fill, meshgrid, repeat, roll, scatter,
                           scatter_add, take_along_axis, tile, trace, tril, triu)

float16 = "float16"
float32 = "float32"
float64 = "float64"
bfloat16 = "bfloat16"   # a name: Tensor(..., dtype=minigrad.bfloat16) and .astype(...) need ml_dtypes

__all__ = ["Tensor", "backend", "grad", "no_grad", "enable_grad", "is_grad_enabled", "detect_anomaly",
           "maximum", "minimum", "where", "concatenate", "stack", "split", "tensor", "zeros", "ones",
           "gradcheck", "gradgradcheck", "GradcheckError", "diagonal", "flip", "gather", "index_select",
           "masked_fill", "meshgrid", "repeat", "roll", "scatter", "scatter_add", "take_along_axis", "tile", "trace",
           "tril", "triu", "nn", "optim", "profile", "dispatch", "impl",
           "set_impl", "get_impl", "AxisError", "autocast", "amp", "float16", "bfloat16", "float32", "float64"]
__all__ += [  # issue 17's math (functions.MATH)
    "abs", "acos", "acosh", "all", "any", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh",
    "argmax", "argmin", "argsort", "asin", "asinh", "atan", "atan2", "atanh", "bitwise_and", "bitwise_not",
    "bitwise_or", "bitwise_xor", "ceil", "cos", "cosh", "cumprod", "cumsum", "erf", "erfc", "exp", "exp2", "expm1",
    "floor", "floor_divide", "fmod", "isclose", "isfinite", "isinf", "isnan", "left_shift", "log", "log10", "log1p",
    "log2", "logcumsumexp", "norm", "prod", "reciprocal", "remainder", "right_shift", "round", "rsqrt", "sign",
    "sin", "sinh", "sort", "sqrt", "square", "std", "tan", "topk", "trunc", "var"]


def __getattr__(name):
    # heavier submodules load on first use, so `import minigrad` (and `minigrad --help`) stay fast
    if name in ("nn", "optim", "profiler", "viz", "amp"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name == "profile":
        from .profiler import profile
        return profile
    raise AttributeError(f"module 'minigrad' has no attribute {name!r}")
