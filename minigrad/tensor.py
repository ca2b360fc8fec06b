"""Tensor: one array of its device's array module, plus what autograd needs."""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import _root_grad, run_backward

_FLOAT_KINDS = "fc"
_is_float = backend.is_float   # kinds "f" and "c", and bfloat16 (ml_dtypes: kind "V")


class Tensor:
    """An n-d array that records the ops applied to it so gradients can flow back.

    ``data`` is a numpy.ndarray on "cpu" and a cupy.ndarray on "cuda". Python numbers and
    lists become float32 (ints become int64); arrays keep their dtype unless ``dtype`` is given.
    Without ``device``, a cupy array stays on "cuda" and host data goes to
    ``minigrad.backend.get_default_device()`` ("cpu" unless set).
    """

    __slots__ = ("data", "requires_grad", "grad", "_ctx", "__weakref__")
    __array_priority__ = 1000   # numpy scalars on the left defer to Tensor's reflected ops

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if device is None:   # device arrays stay where they are; host data goes to the default device
            device = backend.device_of(data) if backend.is_device_array(data) else backend.get_default_device()
        device = backend.check_device(device)
        xp = backend.xp_of(device)
        if dtype is not None:
            dtype = backend.as_dtype(dtype)
        if dtype is None and not hasattr(data, "dtype"):
            host = np.asarray(data)
            if host.dtype.kind == "f":
                dtype = np.float32
            data = host
        if backend.device_of(data) != device or backend.get_array_module(data) is not xp:
            data = backend.to_device(data, device)
        self.data = xp.asarray(data, dtype=dtype) if dtype is not None else xp.asarray(data)
        self.grad = None
        self._ctx = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @staticmethod
    def _make(data, requires_grad=False):
        """Wrap an array the engine produced (no copy, no checks)."""
        t = Tensor.__new__(Tensor)
        if not hasattr(data, "shape") or data.__class__ in _SCALAR_TYPES:
            data = backend.get_array_module(data).asarray(data)
        t.data = data
        t.requires_grad = requires_grad
        t.grad = None
        t._ctx = None
        return t

    # ------------------------------------------------------------ properties
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    device = property(lambda self: backend.device_of(self.data))
    _xp = property(lambda self: backend.get_array_module(self.data))
    is_leaf = property(lambda self: self._ctx is None)
    T = property(lambda self: self.transpose())

    def __len__(self):
        return self.data.shape[0]

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is ambiguous; "
                             "use .any() on .numpy(), or compare .item()")
        return bool(self.data.reshape(()).item())

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        return f"Tensor({backend.to_host(self.data)!r}{grad}{dev})"

    def requires_grad_(self, on=True):
        if on and not _is_float(self.dtype):
            raise TypeError(f"only floating-point tensors can require grad; this tensor is {self.dtype} "
                            "(integer tensors serve as indices and carry no grad)")
        self.requires_grad = bool(on)
        return self

    # ------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph=False, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no input had requires_grad=True, "
                               "or it was computed under no_grad)")
        g = _root_grad(self, grad)
        run_backward([self], [g], retain_graph=retain_graph or create_graph, create_graph=create_graph)

    def detach(self):
        return Tensor._make(self.data, False)

    def zero_grad(self):
        self.grad = None

    # ------------------------------------------------------------ host/device
    def numpy(self) -> np.ndarray:
        """A host copy of the data."""
        return backend.to_host(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors convert to a Python scalar; shape is {self.shape}")
        return self.data.reshape(()).item() if hasattr(self.data, "item") else float(self.data)

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        device = backend.check_device(device)
        if device == self.device and backend.get_array_module(self.data) is backend.xp_of(device):
            return self
        return _ops.ToDevice.apply(self, device=device)

    def astype(self, dtype):
        """This tensor as ``dtype`` (a name, type or dtype; "bfloat16" needs ml_dtypes); the gradient
        flows back cast to the source dtype."""
        dtype = backend.as_dtype(dtype)
        if dtype == self.dtype:
            return self
        if not _is_float(dtype):   # integer/bool tensors carry no grad (casting is not differentiable)
            return Tensor._make(self.data.astype(dtype), False)
        return _ops.AsType.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def half(self):
        return self.astype(np.float16)

    def bfloat16(self):
        return self.astype("bfloat16")

    # ------------------------------------------------------------ operators
    def __add__(self, o):
        return _ops.Add.apply(self, _lift(o, self))

    def __radd__(self, o):
        return _ops.Add.apply(_lift(o, self), self)

    def __sub__(self, o):
        return _ops.Sub.apply(self, _lift(o, self))

    def __rsub__(self, o):
        return _ops.Sub.apply(_lift(o, self), self)

    def __mul__(self, o):
        return _ops.Mul.apply(self, _lift(o, self))

    def __rmul__(self, o):
        return _ops.Mul.apply(_lift(o, self), self)

    def __truediv__(self, o):
        return _ops.Div.apply(self, _lift(o, self))

    def __rtruediv__(self, o):
        return _ops.Div.apply(_lift(o, self), self)

    def __pow__(self, o):
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            return _ops.PowScalar.apply(self, p=o)
        return _ops.Pow.apply(self, _lift(o, self))

    def __rpow__(self, o):
        return _ops.Pow.apply(_lift(o, self), self)

    def __neg__(self):
        return _ops.Neg.apply(self)

    def __pos__(self):
        return self

    def __matmul__(self, o):
        return _ops.MatMul.apply(self, _lift(o, self))

    def __rmatmul__(self, o):
        return _ops.MatMul.apply(_lift(o, self), self)

    def __lt__(self, o):
        return _ops.Compare.apply(self, _lift(o, self), op="less")

    def __le__(self, o):
        return _ops.Compare.apply(self, _lift(o, self), op="less_equal")

    def __gt__(self, o):
        return _ops.Compare.apply(self, _lift(o, self), op="greater")

    def __ge__(self, o):
        return _ops.Compare.apply(self, _lift(o, self), op="greater_equal")

    def eq(self, o):
        return _ops.Compare.apply(self, _lift(o, self), op="equal")

    __hash__ = object.__hash__

    def __getitem__(self, idx):
        return _ops.GetItem.apply(self, idx=_index_arrays(idx))

    # ------------------------------------------------------------ array methods (NumPy names)
    def sum(self, axis=None, keepdims=False):
        return _ops.Sum.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.Mean.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops.Max.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _ops.Min.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        """Sum of squared deviations / (n - ddof); n - ddof <= 0 divides by 0 (inf, or NaN for a
        zero sum), as NumPy and PyTorch. A half type is computed in float32 and rounded once."""
        if self.dtype.itemsize == 2 and _is_float(self.dtype):
            return self.astype(np.float32).var(axis, keepdims, ddof).astype(self.dtype)
        ax = _axes(axis, self.ndim)
        n = int(np.prod([self.shape[a] for a in ax])) if ax else 1
        d = self - self.mean(ax, keepdims=True)
        return (d * d).sum(ax, keepdims=keepdims) * (1.0 / (n - ddof) if n - ddof > 0 else float("inf"))

    def std(self, axis=None, keepdims=False, ddof=0):
        return self.var(axis, keepdims, ddof).sqrt()

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return _ops.Reshape.apply(self, shape=tuple(int(s) for s in shape))

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self):
        return self.reshape(-1)

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(range(self.ndim))[::-1] if not axes else tuple(_axis(a, self.ndim, "transpose") for a in axes)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of {self.ndim} dimensions")
        return _ops.Transpose.apply(self, axes=axes)

    def permute(self, *axes):
        return self.transpose(*axes)

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        a, b = _axis(a, self.ndim, "swapaxes"), _axis(b, self.ndim, "swapaxes")
        axes[a], axes[b] = axes[b], axes[a]
        return _ops.Transpose.apply(self, axes=tuple(axes))

    def squeeze(self, axis=None):
        if axis is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        ax = _axes(axis, self.ndim)                 # a 0-d tensor takes axis 0 or -1 and stays 0-d
        for a in ax:
            if self.shape[a] != 1:
                raise ValueError(f"squeeze: axis {a} has size {self.shape[a]}, not 1 (shape {self.shape})")
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if i not in ax))

    def expand_dims(self, axis):
        ax = (axis,) if isinstance(axis, int) else tuple(axis)
        nd = self.ndim + len(ax)
        ax = sorted(_axis(a, nd, "expand_dims") for a in ax)
        shape = list(self.shape)
        for a in ax:
            shape.insert(a, 1)
        return self.reshape(tuple(shape))

    def unsqueeze(self, axis):
        return self.expand_dims(axis)

    def broadcast_to(self, shape):
        shape = tuple(shape)
        if shape == self.shape:
            return self
        return _ops.BroadcastTo.apply(self, shape=shape)

    def exp(self):
        return _ops.Exp.apply(self)

    def log(self):
        return _ops.Log.apply(self)

    def sqrt(self):
        return _ops.Sqrt.apply(self)

    def tanh(self):
        return _ops.Tanh.apply(self)

    def sigmoid(self):
        return _ops.Sigmoid.apply(self)

    def relu(self):
        return _ops.Relu.apply(self)

    def abs(self):
        return _ops.Abs.apply(self)

    def clip(self, min=None, max=None):
        if min is None and max is None:
            raise ValueError("clip: at least one of min and max must be given")
        return _ops.Clip.apply(self, lo=min, hi=max)

    # ------------------------------------------------------------ manipulation and indexing (minigrad.manipulation)
    def tril(self, k=0):
        return _manip.tril(self, k)

    def triu(self, k=0):
        return _manip.triu(self, k)

    def flip(self, axis=None):
        return _manip.flip(self, axis)

    def roll(self, shift, axis=None):
        return _manip.roll(self, shift, axis)

    def repeat(self, repeats, axis=None):
        """numpy.repeat (PyTorch's repeat_interleave); PyTorch's Tensor.repeat is ``tile``."""
        return _manip.repeat(self, repeats, axis)

    def tile(self, reps):
        return _manip.tile(self, reps)

    def diagonal(self, offset=0, axis1=0, axis2=1):
        return _manip.diagonal(self, offset, axis1, axis2)

    def trace(self, offset=0, axis1=0, axis2=1):
        return _manip.trace(self, offset, axis1, axis2)

    def gather(self, dim, index):
        return _manip.gather(self, dim, index)

    def scatter(self, dim, index, src):
        return _manip.scatter(self, dim, index, src)

    def scatter_add(self, dim, index, src):
        return _manip.scatter_add(self, dim, index, src)

    def take_along_axis(self, indices, axis):
        return _manip.take_along_axis(self, indices, axis)

    def index_select(self, dim, index):
        return _manip.index_select(self, dim, index)

    def masked_fill(self, mask, value):
        return _manip.masked_fill(self, mask, value)


    # ------------------------------------------------------------ math (issue 17): unary functions
    # float results for integer inputs are float32; rounding and sign have a zero gradient
    def sin(self):
        return _ops.Sin.apply(self)

    def cos(self):
        return _ops.Cos.apply(self)

    def tan(self):
        return _ops.Tan.apply(self)

    def asin(self):
        return _ops.Asin.apply(self)

    def acos(self):
        return _ops.Acos.apply(self)

    def atan(self):
        return _ops.Atan.apply(self)

    def sinh(self):
        return _ops.Sinh.apply(self)

    def cosh(self):
        return _ops.Cosh.apply(self)

    def asinh(self):
        return _ops.Asinh.apply(self)

    def acosh(self):
        return _ops.Acosh.apply(self)

    def atanh(self):
        return _ops.Atanh.apply(self)

    arcsin, arccos, arctan, arcsinh, arccosh, arctanh = asin, acos, atan, asinh, acosh, atanh   # NumPy's names

    def log2(self):
        return _ops.Log2.apply(self)

    def log10(self):
        return _ops.Log10.apply(self)

    def log1p(self):
        return _ops.Log1p.apply(self)

    def exp2(self):
        return _ops.Exp2.apply(self)

    def expm1(self):
        return _ops.Expm1.apply(self)

    def reciprocal(self):
        return _ops.Reciprocal.apply(self)

    def rsqrt(self):
        return _ops.Rsqrt.apply(self)

    def square(self):
        return _ops.Square.apply(self)

    def erf(self):
        return _ops.Erf.apply(self)

    def erfc(self):
        return _ops.Erfc.apply(self)

    def sign(self):
        return _ops.Sign.apply(self)

    def floor(self):
        return _ops.Floor.apply(self)

    def ceil(self):
        return _ops.Ceil.apply(self)

    def round(self, decimals=0):
        return _ops.Round.apply(self, decimals=int(decimals))

    def trunc(self):
        return _ops.Trunc.apply(self)

    # ------------------------------------------------------------ math: integer arithmetic, predicates
    def floor_divide(self, o):
        return _ops.FloorDivide.apply(self, _lift(o, self))

    def remainder(self, o):
        """a - b·floor(a/b): the sign of the divisor (Python's %, np.remainder, torch.remainder)."""
        return _ops.Remainder.apply(self, _lift(o, self))

    def fmod(self, o):
        """a - b·trunc(a/b): the sign of the dividend (C's fmod, np.fmod, torch.fmod)."""
        return _ops.Fmod.apply(self, _lift(o, self))

    def __floordiv__(self, o):
        return self.floor_divide(o)

    def __rfloordiv__(self, o):
        return _ops.FloorDivide.apply(_lift(o, self), self)

    def __mod__(self, o):
        return self.remainder(o)

    def __rmod__(self, o):
        return _ops.Remainder.apply(_lift(o, self), self)

    def bitwise_and(self, o):
        return _ops.BitwiseAnd.apply(self, _lift(o, self))

    def bitwise_or(self, o):
        return _ops.BitwiseOr.apply(self, _lift(o, self))

    def bitwise_xor(self, o):
        return _ops.BitwiseXor.apply(self, _lift(o, self))

    def bitwise_not(self):
        return _ops.BitwiseNot.apply(self)

    def left_shift(self, o):
        return _ops.LeftShift.apply(self, _lift(o, self))

    def right_shift(self, o):
        return _ops.RightShift.apply(self, _lift(o, self))

    __and__, __or__, __xor__, __invert__ = bitwise_and, bitwise_or, bitwise_xor, bitwise_not
    __lshift__, __rshift__ = left_shift, right_shift

    def __rand__(self, o):
        return _ops.BitwiseAnd.apply(_lift(o, self), self)

    def __ror__(self, o):
        return _ops.BitwiseOr.apply(_lift(o, self), self)

    def __rxor__(self, o):
        return _ops.BitwiseXor.apply(_lift(o, self), self)

    def __rlshift__(self, o):
        return _ops.LeftShift.apply(_lift(o, self), self)

    def __rrshift__(self, o):
        return _ops.RightShift.apply(_lift(o, self), self)

    def isclose(self, o, rtol=1e-5, atol=1e-8, equal_nan=False):
        return _ops.IsClose.apply(self, _lift(o, self), rtol=rtol, atol=atol, equal_nan=equal_nan)

    def isnan(self):
        return _ops.IsNan.apply(self)

    def isinf(self):
        return _ops.IsInf.apply(self)

    def isfinite(self):
        return _ops.IsFinite.apply(self)

    # ------------------------------------------------------------ math: reductions, scans, order
    def prod(self, axis=None, keepdims=False):
        return _ops.Prod.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def any(self, axis=None, keepdims=False):
        return _ops.Any.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def all(self, axis=None, keepdims=False):
        return _ops.All.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def norm(self, p=2, axis=None, keepdims=False):
        """The vector p-norm over ``axis`` (all elements when None, as torch.linalg.vector_norm; not
        NumPy's matrix norms): p = 1 (sum |x|), 2 (sqrt of sum x², gradient 0 at 0), inf (max |x|),
        -inf (min |x|); ties at the max share its gradient."""
        ax = _axes(axis, self.ndim)
        if p == 2 or p == "fro":
            return _ops.L2Norm.apply(self, axis=ax, keepdims=keepdims)
        if p == 1:
            return self.abs().sum(ax, keepdims)
        if p == float("inf"):
            return self.abs().max(ax, keepdims)
        if p == float("-inf"):
            return self.abs().min(ax, keepdims)
        raise ValueError(f"norm: p must be 1, 2, 'fro', inf or -inf, got {p!r}")

    def cumsum(self, axis=None):
        """Cumulative sum along ``axis`` (None: of the flattened tensor, as NumPy)."""
        return _along(self, axis, "cumsum", lambda t, a: _ops.CumSum.apply(t, axis=a))

    def cumprod(self, axis=None):
        """Cumulative product along ``axis`` (None: flattened); exact gradients with zeros."""
        return _along(self, axis, "cumprod", lambda t, a: _ops.CumProd.apply(t, axis=a))

    def logcumsumexp(self, axis=None):
        """log(cumsum(exp(x))) along ``axis`` (None: flattened), without overflow."""
        return _along(self, axis, "logcumsumexp", lambda t, a: _ops.LogCumSumExp.apply(t, axis=a))

    def argsort(self, axis=-1, descending=False):
        """Indices (int64) that sort along ``axis``; stable (ties keep their order, also descending)."""
        return _along(self, axis, "argsort", lambda t, a: _ops.ArgSort.apply(t, axis=a, descending=descending))

    def sort(self, axis=-1, descending=False):
        """(values, indices) along ``axis``, as PyTorch; stable. The values are differentiable (the
        gradient goes back to where each value came from), the indices are not."""
        def run(t, a):
            idx = _ops.argsort_array(t.data, a, descending)
            return ValuesIndices(_ops.TakeAlong.apply(t, idx=idx, axis=a), Tensor._make(idx))
        return _along(self, axis, "sort", run)

    def topk(self, k, axis=-1, largest=True, sorted=True):
        """(values, indices) of the k largest (``largest=False``: smallest) along ``axis``, in order
        (also when ``sorted=False``); ties go to the lower index. Values are differentiable."""
        def run(t, a):
            n = t.shape[a]
            if not 0 <= k <= n:
                raise ValueError(f"topk: k={k} is out of range for an axis of size {n}")
            idx = _ops.argsort_array(t.data, a, descending=largest)[(slice(None),) * a + (slice(0, k),)]
            idx = t._xp.ascontiguousarray(idx)
            return ValuesIndices(_ops.TakeAlong.apply(t, idx=idx, axis=a), Tensor._make(idx))
        return _along(self, axis, "topk", run)

    def argmax(self, axis=None, keepdims=False):
        """Index (int64) of the first maximum along ``axis`` (None: of the flattened tensor)."""
        return self._arg_extremum(_ops.ArgMax, "argmax", axis, keepdims)

    def argmin(self, axis=None, keepdims=False):
        """Index (int64) of the first minimum along ``axis`` (None: of the flattened tensor)."""
        return self._arg_extremum(_ops.ArgMin, "argmin", axis, keepdims)

    def _arg_extremum(self, op, name, axis, keepdims):
        if axis is None:
            if self.size == 0:
                raise ValueError(f"{name}: an empty tensor (shape {self.shape}) has no {name[3:]}imum")
            return op.apply(self, axis=None, keepdims=keepdims)

        def run(t, a):
            if t.shape[a] == 0:
                raise ValueError(f"{name}: axis {a} of shape {t.shape} is empty, it has no {name[3:]}imum")
            return op.apply(t, axis=a, keepdims=keepdims)
        return _along(self, axis, name, run)


class ValuesIndices(tuple):
    """(values, indices), as PyTorch's sort and topk return them; also by name."""
    __slots__ = ()

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def _along(t, axis, op, run):
    """run(t, axis) for one axis, normalised; None flattens first (NumPy). A 0-d tensor takes axis 0
    or -1 (PyTorch) and runs as shape (1,), its results reshaped back to 0-d."""
    if axis is None:
        return run(t.reshape(-1), 0)
    if t.ndim:
        return run(t, _axis(axis, t.ndim, op))
    if axis not in (0, -1):
        raise AxisError(f"{op}: axis {axis} is out of range for a tensor with 0 dimensions")
    out = run(t.reshape((1,)), 0)
    if isinstance(out, tuple):
        return type(out)(*(o.reshape(()) for o in out))
    return out.reshape(())


_SCALAR_TYPES = (np.float32, np.float64, np.int64, np.int32, np.bool_, np.float16)


def _lift(o, like: Tensor) -> Tensor:
    """Turn the other operand of a binary op into a Tensor on ``like``'s device.

    A Python number takes ``like``'s dtype (no silent float64 upcast of float32 work). A NumPy
    scalar or 0-d host array is a value with its own dtype on any device (it promotes as NumPy 2
    promotes it: ``float32 tensor * np.float64(2)`` is float64 on "cpu" and "cuda" alike). Other
    host data goes where ``Tensor(o)`` would put it, the default device, which must be ``like``'s."""
    if isinstance(o, Tensor):
        return o
    xp = like._xp
    if isinstance(o, (int, float, bool)):
        kind = like.dtype.kind
        if kind in _FLOAT_KINDS or _is_float(like.dtype):
            return Tensor._make(xp.asarray(o, dtype=like.dtype))
        if isinstance(o, float):          # an integer tensor with a Python float computes in float32
            return Tensor._make(xp.asarray(o, dtype=np.float32))
        if kind in "iu" and not isinstance(o, bool):   # a Python int keeps the integer tensor's dtype
            return Tensor._make(xp.asarray(o, dtype=like.dtype))
        return Tensor._make(xp.asarray(o))         # a bool: a value, on any device
    if isinstance(o, np.generic) or (type(o) is np.ndarray and o.ndim == 0):
        return Tensor._make(xp.asarray(o))       # an explicit upload of one value on a device
    src = backend.device_of(o) if backend.is_device_array(o) else backend.get_default_device()
    if src != like.device:
        what = f"on {src}" if backend.is_device_array(o) else f"host data (default device {src})"
        raise RuntimeError(f"an operand is {what} but the tensor is on {like.device}")
    return Tensor._make(xp.asarray(o) if not hasattr(o, "shape") or backend.get_array_module(o) is not xp
                        else o)


# NumPy's axis error: both an IndexError (what NumPy and PyTorch raise for a bad axis) and a
# ValueError (what minigrad raised before), so either `except` catches it
AxisError = getattr(np, "exceptions", np).AxisError


def _axis(a, ndim, op):
    """One axis normalised to 0..ndim-1; out of range is an AxisError naming the op (never a silent wrap)."""
    if not -ndim <= a < ndim:
        raise AxisError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
    return a % ndim


def _axes(axis, ndim):
    """Normalise an axis argument to a sorted tuple of non-negative ints (None: all axes).

    A 0-d tensor takes axis 0 or -1, as in PyTorch: it has one element, so the reduction is over
    no axis at all (the empty tuple)."""
    if axis is None:
        return tuple(range(ndim))
    ax = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in ax:
        if ndim == 0 and a in (0, -1):
            continue
        if not -ndim <= a < ndim:
            raise AxisError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _index_arrays(idx):
    """Replace Tensors inside an index by their arrays."""
    if isinstance(idx, Tensor):
        return idx.data
    if isinstance(idx, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in idx)
    return idx


from . import manipulation as _manip  # noqa: E402  (it imports Tensor)
from . import ops as _ops  # noqa: E402  (ops import Tensor)
