"""The CPU emulator for CUDA kernels (cuda_emu.h and its builder), usable as a sanitizer.

    from minigrad.kernels import emulate
    emulate.launch(source, "axpy<float>", grid, block, (x, y, np.float32(2), np.int32(n)),
                   shared_mem=0, schedule="forward", check=True)

source     CUDA C text (header-free, as NVRTC takes it)
name       an extern "C" kernel or a template instantiation, "axpy<float>"
grid/block int or 1- to 3-tuples
args       NumPy arrays (device pointers, written back in place), None (a null pointer), NumPy
           scalars of the parameter's exact type (np.int32, np.float32, ...)
shared_mem bytes of dynamic shared memory (max_shared opts in above 48 KiB)
schedule   "forward", "reverse" or "random:SEED": the order threads, warps and blocks run in
           (None: emulate.settings() or $MINIGRAD_EMU_SCHEDULE)
check      racecheck, memcheck and initcheck (see cuda_emu.h); off: the plain, faster library

Errors are subclasses of KernelError (see errors.py): CompileError, LaunchConfigError, BarrierError,
ShuffleError, RaceError, OutOfBoundsError, UninitializedReadError, TrapError.

The shipped kernels run through the same machinery (kernels/runtime.py's EmuModule is a Module):
`with emulate.settings(schedule="reverse", check=True): ...` runs every emulated launch in the block
that way; MINIGRAD_EMU_SCHEDULE and MINIGRAD_EMU_CHECK set the defaults (forward, off).
`minigrad kernels sanitize` runs the shipped kernels under every schedule with the checks.
"""

from __future__ import annotations

import hashlib
import threading

from minigrad.kernels.emulate.errors import (  # noqa: F401
    BarrierError,
    CompileError,
    KernelError,
    LaunchConfigError,
    OutOfBoundsError,
    RaceError,
    ShuffleError,
    TrapError,
    UninitializedReadError,
)
from minigrad.kernels.emulate.module import (  # noqa: F401
    Module,
    Schedule,
    current,
    parse_schedule,
    plain_kernels,
    settings,
    substitute,
)

SCHEDULES = ("forward", "reverse", "random:SEED")

_lock = threading.Lock()
_modules: dict = {}


def module_for(source: str, label: str = "source.cu") -> Module:
    """The Module of a CUDA C text (one per distinct text and label, per process); messages and compiler
    errors name the source `label`."""
    key = (hashlib.sha256(source.encode()).hexdigest(), label)
    with _lock:
        if key not in _modules:
            _modules[key] = Module(label, plain_kernels(source), source=source, grow=True)
        return _modules[key]


def launch(source: str, name: str, grid, block, args, shared_mem: int = 0, schedule="forward", check: bool = True,
           max_shared=None) -> None:
    """Compile `source` (cached) and run kernel `name` on the CPU; raise a KernelError subclass on a bug."""
    if not isinstance(source, str):
        raise TypeError(f"source must be CUDA C text (str), got {type(source).__name__}")
    module_for(source).launch(name, grid, block, tuple(args), shared_mem=shared_mem, max_shared=max_shared,
                              schedule=None if schedule is None else parse_schedule(schedule), check=check)
