"""Tensor: one array of its device's array module, plus what autograd needs."""
from __future__ import annotations

import numpy as np

from . import backend
from .autograd import _root_grad, run_backward

_FLOAT_KINDS = "fc"


class Tensor:
    """An n-d array that records the ops applied to it so gradients can flow back.

    ``data`` is a numpy.ndarray on "cpu" and a cupy.ndarray on "cuda". Python numbers and
    lists become float32 (ints become int64); arrays keep their dtype unless ``dtype`` is given.
    """

    __slots__ = ("data", "requires_grad", "grad", "_ctx", "__weakref__")
    __array_priority__ = 1000   # numpy scalars on the left defer to Tensor's reflected ops

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if device is None:
            device = backend.device_of(data) if hasattr(data, "dtype") else "cpu"
        device = backend.check_device(device)
        xp = backend.xp_of(device)
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
        if on and self.dtype.kind not in _FLOAT_KINDS:
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
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind not in _FLOAT_KINDS:   # integer/bool tensors carry no grad (casting is not differentiable)
            return Tensor._make(self.data.astype(dtype), False)
        return _ops.AsType.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

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
        return -((-self).max(axis, keepdims))

    def var(self, axis=None, keepdims=False, ddof=0):
        ax = _axes(axis, self.ndim)
        n = int(np.prod([self.shape[a] for a in ax])) if ax else 1
        d = self - self.mean(ax, keepdims=True)
        return (d * d).sum(ax, keepdims=keepdims) * (1.0 / max(n - ddof, 0) if n - ddof > 0 else float("nan"))

    def std(self, axis=None, keepdims=False, ddof=0):
        return self.var(axis, keepdims, ddof).sqrt()

    def argmax(self, axis=None):
        return Tensor._make(self._xp.argmax(self.data, axis=axis))

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
        ax = _axes(axis, self.ndim)
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


_SCALAR_TYPES = (np.float32, np.float64, np.int64, np.int32, np.bool_, np.float16)


def _lift(o, like: Tensor) -> Tensor:
    """Turn the other operand of a binary op into a Tensor on ``like``'s device.

    A Python number takes ``like``'s dtype (no silent float64 upcast of float32 work)."""
    if isinstance(o, Tensor):
        return o
    xp = like._xp
    if isinstance(o, (int, float, bool)) and like.dtype.kind in _FLOAT_KINDS:
        return Tensor._make(xp.asarray(o, dtype=like.dtype))
    if hasattr(o, "dtype") and backend.device_of(o) != like.device:
        raise RuntimeError(f"an operand is on {backend.device_of(o)} but the tensor is on {like.device}")
    return Tensor._make(xp.asarray(o) if not hasattr(o, "shape") or backend.get_array_module(o) is not xp
                        else o)


def _axis(a, ndim, op):
    """One axis normalised to 0..ndim-1; out of range is a ValueError naming the op (never a silent wrap)."""
    if not -ndim <= a < ndim:
        raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
    return a % ndim


def _axes(axis, ndim):
    """Normalise an axis argument to a sorted tuple of non-negative ints (None: all axes)."""
    if axis is None:
        return tuple(range(ndim))
    ax = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in ax:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % max(ndim, 1))
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
