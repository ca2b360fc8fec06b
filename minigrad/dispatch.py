"""The one place that decides which implementation of an op runs.

Every op is a ``Function`` subclass whose own ``forward`` (NumPy/CuPy array code) and ``backward``
(Tensor ops, so ``create_graph`` works) are its *reference*: the readable path. An op may declare
fast variants beside it:

    class LayerNorm(Function):                 # the reference
        def forward(self, x, weight, bias, eps): ...
        def backward(self, g): ...              # Tensor ops
        def backward_arrays(self, g): ...       # optional: first-order backward on arrays

    @LayerNorm.variant("native")               # the native CPU loop
    class LayerNormNative(LayerNorm):
        @staticmethod
        def takes(x, weight=None, bias=None, eps=1e-5): ...   # can this variant run these inputs?
        def forward(self, ...): ...
        def backward_arrays(self, g): ...

Forward: ``choose`` takes the first declared variant whose ``takes`` accepts the call's arrays
and keyword arguments; else the op itself. Backward: ``backward_of`` runs ``backward_arrays`` (on
raw arrays, no Tensor ops to dispatch) for a first-order backward when the op declares one, and
the Tensor-op ``backward`` under ``create_graph`` (or in reference mode).

The switches, all read here and nowhere else:
  MINIGRAD_IMPL=auto (default) | reference     reference: every op runs its reference forward and
      backward, no native loop or kernel anywhere (also ``set_impl`` and ``impl(...)``).
  MINIGRAD_KERNELS=auto (default) | emulate | off   the CUDA kernels on "cuda"; emulate also runs
      them on "cpu" tensors through the CPU emulator; off: never.
  MINIGRAD_CPU_NATIVE=1 (default) | 0          the native CPU loops (kernels/cpu) on NumPy arrays.
"""
from __future__ import annotations

import contextlib
import os

IMPLS = ("auto", "reference")
_KERNEL_MODES = ("auto", "emulate", "off")


def _impl_from_env() -> str:
    name = os.environ.get("MINIGRAD_IMPL", "auto").strip().lower() or "auto"
    if name not in IMPLS:
        raise ValueError(f"MINIGRAD_IMPL={name!r}: expected one of {', '.join(IMPLS)}")
    return name


_impl = _impl_from_env()


def get_impl() -> str:
    return _impl


def set_impl(name: str) -> str:
    """Set the implementation mode for every op ("auto" or "reference"); returns the previous one."""
    global _impl
    if name not in IMPLS:
        raise ValueError(f"set_impl: expected one of {', '.join(IMPLS)}, got {name!r}")
    prev, _impl = _impl, name
    return prev


@contextlib.contextmanager
def impl(name: str):
    """``with minigrad.impl("reference"):`` every op inside runs its reference implementation."""
    prev = set_impl(name)
    try:
        yield
    finally:
        set_impl(prev)


# ---------------------------------------------------------------- forward and backward choice
_trace = None   # a set while ``trace()`` records which variants ran


def choose(cls, arrays, kwargs):
    """The class whose ``forward`` runs this call: a declared variant of ``cls``, or ``cls``."""
    if _impl == "auto":
        for v in cls.variants:
            if v.takes(*arrays, **kwargs):
                if _trace is not None:
                    _trace.add(v.__name__)
                return v
    return cls


def backward_of(fn, g, create_graph, tensor_class):
    """The input gradients of ``fn`` at output gradient ``g`` (a Tensor), as Tensors or None."""
    if not create_graph and fn.backward_arrays is not None and (_impl == "auto" or fn.op is not type(fn)):
        # a variant's first-order backward reads what its own forward saved, whatever the mode now
        if _trace is not None:
            _trace.add(type(fn).__name__ + ".backward_arrays")
        make = tensor_class._make
        return tuple(a if a is None or isinstance(a, tensor_class) else make(a) for a in fn.backward_arrays(g.data))
    return fn.backward(g)


@contextlib.contextmanager
def trace():
    """Record the names of the variants (and array backwards) chosen inside: ``with trace() as seen:``."""
    global _trace
    prev, _trace = _trace, set()
    try:
        yield _trace
    finally:
        if prev is not None:
            prev |= _trace
        _trace = prev


def all_variants(namespace):
    """{variant class name: op class name} of every variant declared by the op classes in
    ``namespace`` (a module such as minigrad.ops, or a dict)."""
    items = vars(namespace).values() if not isinstance(namespace, dict) else namespace.values()
    return {v.__name__: c.__name__ for c in items if isinstance(c, type) for v in getattr(c, "variants", ())}


# ---------------------------------------------------------------- what a variant may ask
def kernel_mode() -> str:
    mode = os.environ.get("MINIGRAD_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _KERNEL_MODES:
        raise ValueError(f"MINIGRAD_KERNELS={mode!r}: expected one of {', '.join(_KERNEL_MODES)}")
    return mode


def use_kernels(device: str) -> bool:
    """Whether the CUDA kernels serve tensors on ``device`` ("cuda", or "cpu" under emulate)."""
    if _impl != "auto":
        return False
    mode = kernel_mode()
    if mode == "off":
        return False
    return device == "cuda" or (device == "cpu" and mode == "emulate")


def launchers():
    """The kernel families' launchers (imported on first use; looked up on every call, so a test
    can swap one): layernorm_forward/backward and attention_forward/backward."""
    from types import SimpleNamespace

    from minigrad.kernels import attention, layernorm
    return SimpleNamespace(
        layernorm_forward=layernorm.layernorm_forward, layernorm_backward=layernorm.layernorm_backward,
        attention_forward=attention.attention_forward, attention_backward=attention.attention_backward)


def cpu_native(*arrays):
    """The native CPU library (kernels/cpu/native.py: compiled at first use), or None.

    None in reference mode, when MINIGRAD_CPU_NATIVE=0 (read on every call), when the library
    cannot be built (one warning says why), or when any of ``arrays`` (None entries ignored) is not
    a C-contiguous numpy.ndarray of one dtype, float32 or float64.
    """
    global _native
    if _impl != "auto" or os.environ.get("MINIGRAD_CPU_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if _native is None:
        try:
            from minigrad.kernels.cpu import native
        except ImportError:
            return None
        _native = native
    if arrays and not _native.eligible(*arrays):
        return None
    return _native.load()


def native_dtype(*dtypes) -> bool:
    """Whether arrays of these dtypes (all equal, float32 or float64) could go to the native library
    once made contiguous: for variants whose native call takes arrays the forward creates."""
    import numpy as np
    d = dtypes[0]
    return d in (np.float32, np.float64) and all(x == d for x in dtypes) and cpu_native() is not None


_native = None   # minigrad.kernels.cpu.native, imported at the first cpu_native() call


# ---------------------------------------------------------------- autocast (issue 15): the state only
# ``with minigrad.autocast("bfloat16"):`` (or "float16") sets the half type; Function.apply asks
# ``autocast_policy`` only while one is set, so with autocast off nothing here runs. What the
# policies do is minigrad.amp's (autocast_apply).
#   "half":    the op computes on operands rounded to the half type and its output (and, going
#              back, every gradient through those operands and output) is rounded to it too; the
#              op itself accumulates in float32, as a tensor-core GEMM does.
#   "float32": the op runs in float32: half-type float inputs are cast up first.
# Ops in neither list run as they are (float32 tensors stay float32).
AUTOCAST_HALF = ("MatMul", "Linear", "Attention", "GeluMLP", "QKVAttention")
AUTOCAST_FLOAT32 = ("LayerNorm", "Softmax", "LogSoftmax", "LogSumExp", "CrossEntropy", "BinaryCrossEntropy",
                    "Sum", "Mean", "Prod", "L2Norm", "CumSum", "CumProd", "LogCumSumExp", "Exp", "Log", "Pow",
                    "PowScalar", "Sqrt", "Rsqrt", "Reciprocal", "Erf", "Softplus", "Gelu")
_AUTOCAST_POLICY = dict([(n, "half") for n in AUTOCAST_HALF] + [(n, "float32") for n in AUTOCAST_FLOAT32])
_autocast = None      # None, or "bfloat16" / "float16" while autocast is on


def autocast_dtype():
    """The half type autocast computes matmul-like ops in ("bfloat16", "float16"), or None when off."""
    return _autocast


def autocast_policy(cls):
    """"half", "float32" or None: what autocast does to op class ``cls`` (by its op's name)."""
    return _AUTOCAST_POLICY.get((cls.op or cls).__name__)


@contextlib.contextmanager
def autocast(dtype="bfloat16", enabled=True):
    """``with minigrad.autocast("bfloat16"):`` matmul, Linear and attention compute on half-type
    operands with float32 accumulation; norms, softmax, losses and reductions in float32;
    parameters stay float32 (see minigrad.amp). ``enabled=False`` (or dtype "float32") turns it off inside."""
    global _autocast
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}.get(str(dtype), str(dtype))
    if name not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"autocast: dtype must be 'bfloat16', 'float16' or 'float32', got {dtype!r}")
    prev, _autocast = _autocast, (name if enabled and name != "float32" else None)
    try:
        yield
    finally:
        _autocast = prev
