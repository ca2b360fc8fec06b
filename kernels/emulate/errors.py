"""What the emulator raises: one KernelError base, one subclass per class of bug.

    KernelError                 base (a RuntimeError)
      CompileError              g++ rejected the source; .output holds the compiler's message
      LaunchConfigError         refused before running: block/grid/shared-memory limits, unknown kernel
      BarrierError              __syncthreads reached by only some threads, at different call sites; deadlock
      ShuffleError              a warp operation's mask or width is wrong (shuffles, __syncwarp, votes)
      RaceError                 racecheck: read-after-write, write-after-read, write-after-write in shared memory
      OutOfBoundsError          memcheck: an access outside every argument array (or shared array)
      UninitializedReadError    initcheck: a read of shared memory no thread of the block has written
      TrapError                 the kernel called __trap()

Every launch-time error names the kernel and the block, and the schedule it ran under
(`[schedule random:7]`), so a failure that depends on the order reproduces.
"""

from __future__ import annotations


class KernelError(RuntimeError):
    """A kernel could not be built or launched, or misbehaved while running under the emulator."""

    def __init__(self, message: str, *, kernel: str | None = None, schedule: str | None = None):
        super().__init__(message)
        self.kernel = kernel
        self.schedule = schedule


class CompileError(KernelError):
    """g++ rejected the kernel source; `output` is the compiler's message."""

    def __init__(self, message: str, *, output: str = "", kernel: str | None = None):
        super().__init__(message, kernel=kernel)
        self.output = output


class LaunchConfigError(KernelError):
    """The launch was refused before any thread ran (CUDA's limits, unknown kernel, arity)."""


class BarrierError(KernelError):
    """__syncthreads misuse: not every thread arrived, threads wait at different calls, or deadlock."""


class ShuffleError(KernelError):
    """A warp operation (shuffle, __syncwarp, vote) with a bad mask or width."""


class RaceError(KernelError):
    """Two threads touched one shared-memory location in one barrier interval, at least one writing."""


class OutOfBoundsError(KernelError):
    """An access outside every array passed to the launch, or outside the shared arrays."""


class UninitializedReadError(KernelError):
    """A read of shared memory that no thread of the block has written."""


class TrapError(KernelError):
    """The kernel called __trap()."""


# error class codes of cuda_emu.h (MGEMU_E_*)
BY_CODE = {1: LaunchConfigError, 2: BarrierError, 3: ShuffleError, 4: RaceError, 5: OutOfBoundsError,
           6: UninitializedReadError, 7: TrapError}
