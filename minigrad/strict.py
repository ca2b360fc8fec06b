"""A test-only array module that breaks where NumPy-only code would break on CuPy.

``StrictArray`` wraps a numpy array but is *not* an ndarray: like ``cupy.ndarray`` it
refuses implicit conversion to NumPy (``np.asarray(a)`` raises) and refuses to be mixed
with numpy arrays in arithmetic or in numpy functions. The module itself mirrors numpy's
namespace (``strict.zeros``, ``strict.exp``, ``strict.add.at`` ...) the way ``cupy`` does.

Turn it on with ``MINIGRAD_STRICT=1`` (or ``strict.enable()``): every "cpu" tensor then
holds StrictArrays, so any op that allocates with ``numpy`` instead of its ``xp`` fails
loudly in the tests, as it would on a GPU.
"""
from __future__ import annotations

import os

import numpy as np

_enabled = os.environ.get("MINIGRAD_STRICT", "") not in ("", "0")


def enabled() -> bool:
    return _enabled


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


class StrictConversionError(TypeError):
    pass


def _refuse(what: str):
    raise StrictConversionError(
        f"strict backend: {what}. CuPy would refuse this too: use the array module of the "
        "inputs (minigrad.backend.get_array_module) or an explicit minigrad.backend.to_host")


def _unwrap(x):
    """StrictArray -> ndarray, recursively through tuples/lists/dicts; a bare ndarray is refused."""
    t = type(x)
    if t is StrictArray:
        return x._a
    if t is np.ndarray:
        _refuse("a numpy.ndarray was mixed with device arrays")
    if t is tuple or t is list:
        return t(_unwrap(v) for v in x)
    if t is dict:
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _unwrap_index(x):
    """Indices may be host arrays (CuPy accepts them in indexing)."""
    t = type(x)
    if t is StrictArray:
        return x._a
    if t is tuple:
        return tuple(_unwrap_index(v) for v in x)
    return x


def _wrap(r):
    t = type(r)
    if t is np.ndarray:
        return StrictArray(r)
    if isinstance(r, np.generic) and not isinstance(r, (np.dtype,)):
        return StrictArray(np.asarray(r))   # CuPy reductions return 0-d arrays, not scalars
    if t is tuple or t is list:
        return t(_wrap(v) for v in r)
    return r


class StrictArray:
    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, a: np.ndarray):
        self._a = a

    def unwrap(self) -> np.ndarray:
        return self._a

    # --- the refusals that make this a CuPy stand-in ---
    def __array__(self, *args, **kwargs):
        _refuse("implicit conversion of a device array to numpy (np.asarray / np.array)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # --- attributes and methods ---
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))

    def __getattr__(self, name):
        if name.startswith("__"):
            # no __array_interface__ / __array_struct__ forwarding: numpy would use them to convert
            # silently, which is exactly what CuPy arrays refuse
            raise AttributeError(f"StrictArray has no attribute {name!r}")
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))
        return _wrap(attr)

    def get(self):
        """Explicit device-to-host copy, as cupy.ndarray.get()."""
        return self._a.copy()

    def __getitem__(self, idx):
        return _wrap(self._a[_unwrap_index(idx)])

    def __setitem__(self, idx, value):
        self._a[_unwrap_index(idx)] = _unwrap(value) if type(value) is not np.ndarray else value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return self._a.__index__()

    def __bool__(self):
        return bool(self._a)


def _binop(name):
    def op(self, other):
        return _wrap(getattr(self._a, name)(_unwrap(other)))
    op.__name__ = name
    return op


for _name in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv",
              "rfloordiv", "pow", "rpow", "matmul", "rmatmul", "mod", "lt", "le", "gt", "ge", "eq",
              "ne", "and", "rand", "or", "ror", "xor", "iadd", "isub", "imul", "itruediv"):
    setattr(StrictArray, f"__{_name}__", _binop(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_name}__", (lambda n: lambda self: _wrap(getattr(self._a, n)()))(f"__{_name}__"))


class _StrictUfunc:
    """numpy ufunc whose results are StrictArrays (``strict.exp``, ``strict.add.at`` ...)."""

    def __init__(self, uf):
        self._uf = uf

    def __call__(self, *args, **kwargs):
        return _wrap(self._uf(*_unwrap(args), **_unwrap(kwargs)))

    def at(self, a, idx, b=None):
        args = (_unwrap(a), _unwrap_index(idx)) + (() if b is None else (_unwrap(b),))
        self._uf.at(*args)

    def __getattr__(self, name):
        attr = getattr(self._uf, name)
        return (lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))) if callable(attr) else attr


def _host_ok(args, kwargs):
    """Constructors accept host data (cupy.asarray(np_array) is an explicit upload)."""
    return (tuple(a._a if type(a) is StrictArray else a for a in args),
            {k: (v._a if type(v) is StrictArray else v) for k, v in kwargs.items()})


_CONSTRUCTORS = {"asarray", "array", "ascontiguousarray", "asanyarray"}


class _Module:
    ndarray = StrictArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, np.ufunc):
            return _StrictUfunc(attr)
        if name in _CONSTRUCTORS:
            def construct(*a, **k):
                a, k = _host_ok(a, k)
                return StrictArray(np.array(attr(*a, **k), copy=True) if name != "ascontiguousarray"
                                   else attr(*a, **k))
            return construct
        if isinstance(attr, type) or not callable(attr):
            return attr          # dtypes, constants, classes
        return lambda *a, **k: _wrap(attr(*_unwrap(a), **_unwrap(k)))


_module = _Module()
_module.enabled, _module.enable, _module.StrictArray = enabled, enable, StrictArray
_module.StrictConversionError = StrictConversionError
_module.__name__ = __name__


def __getattr__(name):   # module-level: strict.zeros, strict.exp, ...
    return getattr(_module, name)

