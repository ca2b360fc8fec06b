"""The kernel runtime: compile a .cu file, load it, cache it, launch its kernels on CuPy or the
CPU emulator. It knows no kernel family: a family module (kernels/layernorm.py, ...) hands it the
file and the template instantiations to compile, and launches through it.

    program = Program("layernorm.cu", ["layernorm_forward<float>", ...])
    program.launch(name, grid, block, args, shared_mem=0, max_shared=None)
        name        one of the program's instantiations, e.g. "layernorm_forward<float>" (the list
                    is what CuPy's name_expressions and the emulator build compile; kernels/check.py
                    compiles the same list, read from kernels/registry.py, with NVRTC)
        grid/block  int or tuple of up to 3 ints
        args        tuple: arrays (numpy under emulation, cupy on a GPU) or None for a null pointer,
                    and NumPy scalars of the exact C type (np.int32, np.float32, np.float64, ...).
                    Python int/float are refused: CuPy would pass them as long long/double.
        shared_mem  dynamic shared memory in bytes; max_shared opts in above 48 KiB (as
                    cudaFuncAttributeMaxDynamicSharedMemorySize would).
    The backend is chosen from the arrays: any cupy.ndarray argument -> CuPy, else the emulator.
    Both compile the .cu with its `#include "…"` of kernels headers spliced in (kernels/includes.py).
    Each program is compiled once per process and backend (the emulator's .so is also cached on
    disk by hash). Under the emulator, argument types are checked against the kernel's C signature.

Also here, for launchers: check_array (validate an argument before any launch), array_module
(numpy or cupy, from the arguments), KernelLaunchError (= emulate.KernelError: the emulator refused a
launch or a kernel misbehaved; its subclasses name the class of bug).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from minigrad.kernels.emulate.errors import KernelError
from minigrad.kernels.includes import expand as expand_includes

KERNEL_DIR = Path(__file__).resolve().parent
DEFAULT_SHARED_LIMIT = 48 * 1024
# Options for cupy.RawModule. CuPy itself appends -ftz=true and the device's -arch; kernels/check.py
# compiles with NVRTC_OPTIONS + CUPY_ADDED_OPTIONS + an arch, i.e. what CuPy ends up passing.
NVRTC_OPTIONS = ("--std=c++17",)
CUPY_ADDED_OPTIONS = ("-ftz=true",)

# The emulator's errors: KernelError and one subclass per class of bug (kernels/emulate/errors.py).
KernelLaunchError = KernelError


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
    """A .cu file built for the CPU emulator: kernels/emulate/module.py's Module (plain and checked
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
    """A .cu file compiled by NVRTC through cupy.RawModule (needs a GPU).

    launch() checks what the emulator checks, before CUDA would fail with a bare error code:
    static + dynamic shared memory within the limit (48 KiB, or max_shared when the caller opts
    in, itself within the device's opt-in maximum, cudaDevAttrMaxSharedMemoryPerBlockOptin), and
    the block within the kernel's max_threads_per_block (fewer than 1024 when registers run short).
    Above 48 KiB the kernel's cudaFuncAttributeMaxDynamicSharedMemorySize is raised to what the
    launch needs, once per size. A None argument is passed as a 64-bit zero: a null pointer.
    """

    _OPTIN_ATTR = 97   # cudaDevAttrMaxSharedMemoryPerBlockOptin (driver_types.h; not exported by every CuPy)

    def __init__(self, cu, names):
        import cupy

        self.cu = cu
        path = KERNEL_DIR / cu        # its headers spliced in: CuPy's cache keys on the text it compiles
        self.mod = cupy.RawModule(code=expand_includes(path.read_text(), path), options=NVRTC_OPTIONS,
                                  name_expressions=list(names))
        self._fns = {}        # name -> (RawKernel, static shared bytes, max threads per block)
        self._dynamic = {}    # name -> the max dynamic shared memory attribute set so far

    def _function(self, name):
        if name not in self._fns:
            fn = self.mod.get_function(name)
            self._fns[name] = (fn, int(fn.shared_size_bytes), int(fn.max_threads_per_block))
        return self._fns[name]

    @staticmethod
    def _optin_limit():
        import cupy

        rt = cupy.cuda.runtime
        return int(rt.deviceGetAttribute(CupyModule._OPTIN_ATTR, cupy.cuda.Device().id))

    def launch(self, name, grid, block, args, shared_mem=0, max_shared=None):
        fn, static, max_threads = self._function(name)
        g, b = _dims(grid, "grid"), _dims(block, "block")
        shared_mem = int(shared_mem)
        if b[0] * b[1] * b[2] > max_threads:
            raise KernelLaunchError(f"kernel {name}: block {b} has {b[0] * b[1] * b[2]} threads; this kernel can "
                                    f"launch at most {max_threads} per block on this device (registers)")
        limit = DEFAULT_SHARED_LIMIT if max_shared is None else int(max_shared)
        if static + shared_mem > limit:
            raise KernelLaunchError(f"kernel {name}: shared memory {static + shared_mem} bytes (static {static} + "
                                    f"dynamic {shared_mem}) exceeds the limit of {limit} bytes")
        if static + shared_mem > DEFAULT_SHARED_LIMIT and self._dynamic.get(name, -1) < shared_mem:
            optin = self._optin_limit()
            if static + shared_mem > optin:
                raise KernelLaunchError(f"kernel {name}: shared memory {static + shared_mem} bytes (static {static} + "
                                        f"dynamic {shared_mem}) exceeds this device's opt-in maximum of {optin}")
            fn.max_dynamic_shared_size_bytes = shared_mem
            self._dynamic[name] = shared_mem
        # a 64-bit zero is a null pointer whatever CuPy does with None (older CuPy: cupy#9046)
        args = tuple(np.uint64(0) if a is None else a for a in args)
        fn(g, b, args, shared_mem=shared_mem)


class Program:
    """One .cu file in kernels/ (or a path) and the template instantiations compiled from it."""

    def __init__(self, cu, names):
        self.cu = cu
        self.names = tuple(names)
        self._modules = {}  # backend -> EmuModule | CupyModule
        self._lock = threading.Lock()

    def module(self, backend):
        """The program compiled for backend "emulate" or "cuda" (once per process)."""
        with self._lock:
            mod = self._modules.get(backend)
            if mod is None:
                if backend == "emulate":
                    mod = EmuModule(self.cu, self.names)
                elif backend == "cuda":
                    mod = CupyModule(self.cu, self.names)
                else:
                    raise ValueError(f"backend must be 'emulate' or 'cuda', got {backend!r}")
                self._modules[backend] = mod
        return mod

    def launch(self, name, grid, block, args, shared_mem=0, max_shared=None):
        backend = "cuda" if any(is_cupy_array(a) for a in args) else "emulate"
        self.module(backend).launch(name, grid, block, args, shared_mem=shared_mem, max_shared=max_shared)
