"""Load CUDA kernel families and launch them: CuPy RawModule on a GPU, the CPU emulator otherwise.

Generic API (used by every family):
    launch(cu, name, grid, block, args, shared_mem=0, max_shared=None)
        cu          "layernorm.cu" (a file in kernels/)
        name        a template instantiation, e.g. "layernorm_forward<float>"; it must be listed in
                    the family's registration in kernels/registry.py (that list is what NVRTC, CuPy's
                    name_expressions and the emulator build all compile)
        grid/block  int or tuple of up to 3 ints
        args        tuple: arrays (numpy under emulation, cupy on a GPU) or None for a null pointer,
                    and NumPy scalars of the exact C type (np.int32, np.float32, np.float64, ...).
                    Python int/float are refused: CuPy would pass them as long long/double.
        shared_mem  dynamic shared memory in bytes; max_shared opts in above 48 KiB (as
                    cudaFuncAttributeMaxDynamicSharedMemorySize would).
    The backend is chosen from the arrays: any cupy.ndarray argument -> CuPy, else the emulator.
    Each module is compiled once per process (the emulator's .so is also cached on disk by hash).
    Under the emulator, argument types are checked against the kernel's C signature.

Adding a kernel family (e.g. attention):
    1. kernels/<family>.cu: header-free CUDA C, templated on the scalar type.
    2. kernels/registry.py: one line per kernel version, listing its template instantiations.
    3. Public launcher functions (validate shapes/dtypes/contiguity with check_array() and raise
       before any launch, allocate outputs with the input's array module, call launch()); put them
       in kernels/<family>.py or below the layernorm section here.

Public layernorm functions: layernorm_forward, layernorm_backward (see their docstrings).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

# The emulator's errors: KernelError and one subclass per class of bug (kernels/emulate/errors.py).
from minigrad.kernels.emulate.errors import KernelError as KernelLaunchError  # noqa: F401

KERNEL_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED_LIMIT = 48 * 1024
# Options for cupy.RawModule. CuPy itself appends -ftz=true and the device's -arch; kernels/check.py
# compiles with NVRTC_OPTIONS + CUPY_ADDED_OPTIONS + an arch, i.e. what CuPy ends up passing.
NVRTC_OPTIONS = ("--std=c++17",)
CUPY_ADDED_OPTIONS = ("-ftz=true",)

_lock = threading.Lock()
_modules: dict = {}


def _dims(v, what):
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in t):
        raise ValueError(f"{what} must be a positive int or a tuple of 1-3 positive ints, got {v!r}")
    return tuple(int(d) for d in t) + (1,) * (3 - len(t))


def is_cupy_array(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays):
    """numpy, or cupy when any argument is a cupy.ndarray."""
    if any(is_cupy_array(a) for a in arrays if a is not None):
        import cupy

        return cupy
    return np


def check_array(name, a, *, ndim=None, dtype=None, shape=None):
    """Raise TypeError/ValueError naming `name` unless `a` is a C-contiguous array as required."""
    if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (got strides {a.strides}); pass np.ascontiguousarray({name})")
    return a


# ----------------------------------------------------------------------------- emulator backend

class EmuModule:
    """A .cu family built for the CPU emulator: kernels/emulate/module.py's Module (plain and checked
    libraries; schedule and checks from emulate.settings() or MINIGRAD_EMU_SCHEDULE / MINIGRAD_EMU_CHECK)."""

    def __init__(self, cu, names):
        from minigrad.kernels.emulate.module import Module

        self.cu = cu
        self.module = Module(KERNEL_DIR / cu, names)
        self.lib = self.module.lib

    def signature(self, name):
        return self.module.signature(name)

    def launch(self, name, grid, block, args, shared_mem=0, max_shared=None):
        self.module.launch(name, grid, block, args, shared_mem=shared_mem, max_shared=max_shared)


# ----------------------------------------------------------------------------- CuPy backend


class CupyModule:
    """A .cu family compiled by NVRTC through cupy.RawModule (needs a GPU)."""

    def __init__(self, cu, names):
        import cupy

        self.cu = cu
        self.mod = cupy.RawModule(code=(KERNEL_DIR / cu).read_text(), options=NVRTC_OPTIONS,
                                  name_expressions=list(names))
        self._fns = {}

    def launch(self, name, grid, block, args, shared_mem=0, max_shared=None):
        if name not in self._fns:
            self._fns[name] = self.mod.get_function(name)
        fn = self._fns[name]
        if shared_mem > DEFAULT_SHARED_LIMIT:
            fn.max_dynamic_shared_size_bytes = int(max_shared or shared_mem)
        # CuPy turns None into an invalid pointer (cupy#9046); a 64-bit zero is a null pointer.
        args = tuple(np.uint64(0) if a is None else a for a in args)
        fn(_dims(grid, "grid"), _dims(block, "block"), args, shared_mem=int(shared_mem))


def get_module(cu, backend):
    """The compiled family `cu` for backend "emulate" or "cuda" (once per process)."""
    key = (cu, backend)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            from minigrad.kernels import registry

            names = registry.instantiations(cu)
            mod = EmuModule(cu, names) if backend == "emulate" else CupyModule(cu, names)
            _modules[key] = mod
    return mod


def launch(cu, name, grid, block, args, shared_mem=0, max_shared=None):
    backend = "cuda" if any(is_cupy_array(a) for a in args) else "emulate"
    get_module(cu, backend).launch(name, grid, block, args, shared_mem=shared_mem, max_shared=max_shared)


# ----------------------------------------------------------------------------- layernorm
# Launch configuration (see kernels/layernorm.cu): rows up to 1024 wide get one warp per row and
# R rows per block; wider rows get a block of G threads (about 8 elements per thread). Rows are
# cached in dynamic shared memory when R * C * itemsize * buffers fits the budget below.
LAYERNORM_CU = "layernorm.cu"
_SMEM_BUDGET = DEFAULT_SHARED_LIMIT - 2048  # leave room for the kernels' static shared memory
_LN_MAX_PARTIALS = 512  # blocks of the fused backward = rows of dweight/dbias partials
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _float_array(name, a, ndim):
    check_array(name, a, ndim=ndim)
    if a.dtype not in _CTYPE:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    return a


def _rows_config(N, C, itemsize, buffers):
    """(grid, block, shared_mem, cache) for a row-group kernel over an (N, C) array."""
    if C <= 1024:
        G, R = 32, 4
        while R > 1 and R * C * itemsize * buffers > _SMEM_BUDGET:
            R //= 2
    else:
        G, R = min(1024, max(64, 32 * -(-C // 256))), 1  # ceil(C/8) rounded up to a warp
    smem = R * C * itemsize * buffers
    cache = smem <= _SMEM_BUDGET
    if not cache:
        smem, R = 0, (4 if G == 32 else 1)
    return (-(-N // R),), (G, R), smem, cache


def layernorm_forward(x, weight, bias, eps, *, kernels=None):
    """LayerNorm over the last axis with the fused kernel.

    x (N, C) C-contiguous float32/float64; weight, bias (C,) of x's dtype, or None.
    Returns y (N, C), mean (N,), rstd (N,) in x's dtype (rstd = 1/sqrt(biased variance + eps)).
    numpy arrays run on the CPU emulator, cupy arrays on the GPU. `kernels` maps role -> kernel
    name to run another registered version ({"forward": "layernorm_forward"} by default).
    """
    _float_array("x", x, 2)
    N, C = x.shape
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            check_array(name, a, ndim=1, dtype=x.dtype)
            if a.shape[0] != C:
                raise ValueError(f"{name} has {a.shape[0]} elements but x rows have width {C}")
            if array_module(a) is not array_module(x):
                raise TypeError(f"{name} and x must both be numpy or both be cupy arrays")
    if C == 0:
        raise ValueError("x has rows of width 0; layernorm needs at least one column")
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps must be a non-negative number, got {eps}")
    xp = array_module(x)
    y = xp.empty_like(x)
    mean = xp.empty((N,), dtype=x.dtype)
    rstd = xp.empty((N,), dtype=x.dtype)
    if N == 0:
        return y, mean, rstd
    names = {"forward": "layernorm_forward", **(kernels or {})}
    grid, block, smem, cache = _rows_config(N, C, x.itemsize, 1)
    t = x.dtype.type
    launch(LAYERNORM_CU, f"{names['forward']}<{_CTYPE[x.dtype]}>", grid, block,
           (x, weight, bias, y, mean, rstd, np.int32(N), np.int32(C), t(eps), np.int32(cache)), shared_mem=smem)
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd, *, bias=True, kernels=None):
    """Gradients of layernorm_forward from its saved mean and rstd.

    dy, x (N, C); weight (C,) or None; mean, rstd (N,); all one float dtype, C-contiguous.
    Returns (dx, dweight, dbias): dweight is None when weight is None; dbias (the sum of dy over
    rows) is computed when bias=True (the default, whether or not the forward had a bias) and is
    None when bias=False. dweight/dbias come from a fixed-order two-stage reduction: repeated
    calls give bit-identical results.

    Kernels: layernorm_backward_fused (dx + per-block column partials) then
    layernorm_backward_reduce; when the fused kernel's accumulators do not fit in shared memory
    (or a version without a "fused" role is requested through `kernels`), layernorm_backward_dx
    then layernorm_backward_partials and layernorm_backward_reduce.
    """
    _float_array("x", x, 2)
    N, C = x.shape
    check_array("dy", dy, dtype=x.dtype, shape=(N, C))
    check_array("mean", mean, dtype=x.dtype, shape=(N,))
    check_array("rstd", rstd, dtype=x.dtype, shape=(N,))
    if weight is not None:
        check_array("weight", weight, ndim=1, dtype=x.dtype)
        if weight.shape[0] != C:
            raise ValueError(f"weight has {weight.shape[0]} elements but x rows have width {C}")
    arrays = [a for a in (dy, x, weight, mean, rstd) if a is not None]
    if len({array_module(a) for a in arrays}) != 1:
        raise TypeError("dy, x, weight, mean and rstd must all be numpy or all be cupy arrays")
    xp = array_module(x)
    names = {"dx": "layernorm_backward_dx", "partials": "layernorm_backward_partials",
             "reduce": "layernorm_backward_reduce", "fused": "layernorm_backward_fused"}
    if kernels is not None:  # a registered version: exactly the roles it lists
        names = dict(kernels)
    ct = _CTYPE[x.dtype]
    dx = xp.empty_like(x)
    dweight = xp.zeros((C,), dtype=x.dtype) if weight is not None else None
    dbias = xp.zeros((C,), dtype=x.dtype) if bias else None
    if N == 0 or C == 0:
        return dx, dweight, dbias
    grid, block, smem, cache = _rows_config(N, C, x.itemsize, 2)
    need_params = dweight is not None or dbias is not None
    if need_params and "fused" in names and block[1] * C * x.itemsize * 2 <= _SMEM_BUDGET:
        # dx and per-block column partials in one kernel, then the fixed-order reduction
        G, R = block
        P = min(-(-N // R), _LN_MAX_PARTIALS)
        pw = xp.empty((P, C), dtype=x.dtype) if dweight is not None else None
        pb = xp.empty((P, C), dtype=x.dtype) if dbias is not None else None
        launch(LAYERNORM_CU, f"{names['fused']}<{ct}>", (P,), (G, R),
               (dy, x, weight, mean, rstd, dx, pw, pb, np.int32(N), np.int32(C)), shared_mem=2 * R * C * x.itemsize)
    else:
        launch(LAYERNORM_CU, f"{names['dx']}<{ct}>", grid, block,
               (dy, x, weight, mean, rstd, dx, np.int32(N), np.int32(C), np.int32(cache)), shared_mem=smem)
        if not need_params:
            return dx, None, None
        rows_per_chunk = max(32, -(-N // 256))
        P = -(-N // rows_per_chunk)
        pw = xp.empty((P, C), dtype=x.dtype) if dweight is not None else None
        pb = xp.empty((P, C), dtype=x.dtype) if dbias is not None else None
        launch(LAYERNORM_CU, f"{names['partials']}<{ct}>", (-(-C // 32), P), (32, 8),
               (dy, x, mean, rstd, pw, pb, np.int32(N), np.int32(C), np.int32(rows_per_chunk)))
    launch(LAYERNORM_CU, f"{names['reduce']}<{ct}>", (-(-C // 256),), (256,),
           (pw, pb, dweight, dbias, np.int32(P), np.int32(C)))
    return dx, dweight, dbias
