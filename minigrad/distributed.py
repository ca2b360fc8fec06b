"""Data parallelism across processes and machines: one small communicator interface, three backends.

    comm = distributed.init("mpi")            # "single" (the default), "mpi" or "nccl"; None: detect
    comm.rank, comm.size, comm.local_rank     # local_rank: this rank's index among the ranks of its machine
    comm.broadcast_parameters(model)          # rank 0's parameters (and float buffers) on every rank
    comm.allreduce_mean_(buf)                 # in place, over ONE flat contiguous array: the mean over ranks
    comm.barrier()

Backends (ChainerMN's design: one interface; gradients packed into one flat buffer, one allreduce):
  single  one process; every operation is a no-op. What `minigrad train` uses unless launched by MPI.
  mpi     mpi4py over host (NumPy) arrays: the buffer-based uppercase API (``Allreduce(IN_PLACE, buf)``,
          ``Bcast``), never the pickling lowercase one for arrays (only small Python objects such as
          an error message or the NCCL id travel pickled). Shared memory between the ranks of one
          machine, TCP (or the fabric) between machines; ``MPIR_CVAR_NOLOCAL=1`` forces TCP on one machine.
  nccl    NCCL through CuPy (``cupy.cuda.nccl``) over device arrays, on CuPy's current stream, so a
          collective is ordered after the kernels that produced its input and no host sync is needed.
          The NCCL id is made on rank 0 and broadcast over MPI; one rank without an MPI launch needs
          no MPI at all (and runs the same code path).

Failure: a blocking collective (or the host sync that waits for an NCCL one) runs under a watchdog.
A rank that waits longer than ``timeout`` seconds for the others (before training starts, at least
SETUP_TIMEOUT: a rank may be preparing its data) prints one line naming what it waited in and ends
the whole job (``MPI_Abort``): a dead or hung rank never makes the others hang.
Under MPICH's mpiexec a rank that dies is noticed sooner: the launcher ends the others at once
(`minigrad launch`, models/mpi_launch.py, then says which rank died in one line).

``GradientBuffer`` is what a training loop reduces each step: every gradient copied into one flat
buffer per dtype (one in practice), one allreduce, then each ``p.grad`` a view of the result; the
loss and a few flags travel in a second, tiny float64 allreduce.

Only NumPy is imported at module level; mpi4py and CuPy are imported by the backends that use them.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np

from . import backend
from .backend import get_array_module

BACKENDS = ("single", "mpi", "nccl")
DEFAULT_TIMEOUT = 60.0     # seconds a rank waits in one collective before it declares the others lost
SETUP_TIMEOUT = 600.0      # at least this long before training starts: one rank may be fetching or tokenizing data
ALIGN = 16                 # elements: every gradient view in a flat buffer starts on a 64-byte boundary
ABORT_GRACE = 1.0          # seconds between a rank's last line and MPI_Abort

MPI_INSTALL = "pip install 'minigrad[mpi]' (mpi4py and the mpich wheel), or mpi4py built against your cluster's MPI"

# launcher environment variables: (size, rank, local rank) for MPICH/Intel MPI (Hydra, PMI), Open MPI, MVAPICH
_LAUNCH_ENV = (("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
               ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
               ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"))


class DistributedError(RuntimeError):
    """A problem with the distributed setup the user can fix; the message is one line."""


def agreed(exc: BaseException) -> BaseException:
    """Mark an exception as raised on every rank alike (e.g. a non-finite loss after the allreduce),
    so that only rank 0 reports it and no rank needs to end the others."""
    exc.all_ranks = True
    return exc


def launched() -> tuple[int, int, int] | None:
    """(size, rank, local rank) when an MPI launcher started this process, else None."""
    for size, rank, local in _LAUNCH_ENV:
        if size in os.environ:
            try:
                return int(os.environ[size]), int(os.environ.get(rank, "0")), int(os.environ.get(local, "0"))
            except ValueError:
                return None
    return None


def choose_backend(requested: str | None, device: str = "cpu") -> str:
    """--dist: "none"/"single", "mpi", "nccl", or None to detect (an MPI launch of more than one
    process: "nccl" on cuda, "mpi" on cpu; else "single")."""
    if requested in (None, "auto"):
        env = launched()
        if env is None or env[0] <= 1:
            return "single"
        return "nccl" if device == "cuda" else "mpi"
    requested = "single" if requested == "none" else requested
    if requested not in BACKENDS:
        raise DistributedError(f"unknown distributed backend {requested!r}: expected none, mpi or nccl")
    if requested == "nccl" and device != "cuda":
        raise DistributedError("--dist nccl runs on GPUs: it needs --device cuda (use --dist mpi on CPUs)")
    if requested == "mpi" and device == "cuda":
        raise DistributedError("--dist mpi moves host arrays; with --device cuda use --dist nccl")
    return requested


def _check_flat(buf, what: str) -> None:
    if getattr(buf, "ndim", None) != 1 or not buf.flags.c_contiguous:
        raise ValueError(f"{what} takes one flat contiguous array (pack the gradients first: GradientBuffer); "
                         f"got shape {getattr(buf, 'shape', type(buf).__name__)}")


# ============================================================================ the interface

class Communicator:
    """The single-process backend, and the interface the others implement: rank 0 of 1, every
    collective a no-op."""

    backend = "single"
    _watchdog = None          # a _Watchdog in the backends whose collectives can wait

    def __init__(self):
        self.rank, self.size, self.local_rank = 0, 1, 0
        self.timeout = DEFAULT_TIMEOUT
        self.label = "minigrad"
        self.training = False              # set once every rank has reported its setup ok (agree)

    # ---- collectives over arrays (the uppercase, buffer-based ones)
    def allreduce_sum_(self, buf):
        """Sum ``buf`` (one flat contiguous array) over the ranks, in place; returns it."""
        _check_flat(buf, "allreduce_sum_")
        return buf

    def allreduce_mean_(self, buf):
        """The mean over the ranks of ``buf`` (one flat contiguous array), in place: the sum, divided
        by the number of ranks (exact for 1, 2, 4, ... ranks); returns it."""
        self.allreduce_sum_(buf)
        if self.size > 1:
            buf /= self.size
        return buf

    def broadcast_(self, buf, root: int = 0):
        """Rank ``root``'s ``buf`` (one flat contiguous array) into every rank's, in place; returns it."""
        _check_flat(buf, "broadcast_")
        return buf

    def broadcast_parameters(self, model, root: int = 0) -> None:
        """Rank ``root``'s parameters and floating-point buffers into every rank's (in place, so arrays
        shared with data-parallel workers stay shared): one broadcast per dtype, one in practice."""
        if self.size == 1:
            return
        tensors = list(model.parameters()) + [b for m in model.modules() for b in m._buffers.values()
                                              if np.dtype(b.dtype).kind == "f"]
        seen, unique = set(), []
        for t in tensors:                  # tied parameters once
            if id(t) not in seen:
                seen.add(id(t))
                unique.append(t)
        for flat, views, members in _pack([t.data for t in unique]):
            self.broadcast_(flat, root)
            for view, i in zip(views, members):
                unique[i].data[...] = view.reshape(unique[i].data.shape)

    # ---- small Python objects (pickled: never arrays)
    def broadcast_object(self, obj, root: int = 0):
        return obj

    def allgather_object(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    # ---- setup agreement and failure
    def agree(self, error: str | None = None) -> None:
        """Every rank says whether its setup succeeded; if one failed, every rank raises the same
        DistributedError (the lowest failing rank's message). A rank that failed calls this with its
        message instead of reaching the next collective, so the others never wait for it."""
        errors = self.allgather_object(error)
        bad = [(r, e) for r, e in enumerate(errors) if e is not None]
        if bad:
            r, e = bad[0]
            msg = e if r == 0 or (len(bad) == self.size and all(x == e for _, x in bad)) else f"rank {r}: {e}"
            raise agreed(DistributedError(msg))

    def abort(self, code: int = 1) -> None:
        """End every rank now (after this rank printed why)."""
        sys.stderr.flush()
        os._exit(code)

    @contextlib.contextmanager
    def waiting(self, what: str):
        """Around a call that waits for the other ranks: the watchdog (the mpi and nccl backends
        have one) ends the job if it lasts longer than ``timeout`` seconds."""
        dog = self._watchdog
        if dog is not None:
            dog.enter(what)
        try:
            yield
        finally:
            if dog is not None:
                dog.leave()

    def describe(self) -> str:
        return "1 process"


# ============================================================================ the watchdog

class _Watchdog:
    """A daemon thread that ends the job when one wait for the other ranks lasts too long.

    The blocking MPI calls release the GIL, so the thread runs while the main thread waits in one.
    It prints one line (the label, the rank, what it waited in) and calls the communicator's abort.
    """

    def __init__(self, comm):
        self.comm = comm
        self.since = None
        self.what = ""
        self._lock = threading.Lock()
        self._thread = None

    def enter(self, what: str) -> None:
        with self._lock:
            self.since, self.what = time.monotonic(), what
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="minigrad-dist-watchdog", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        with self._lock:
            self.since = None

    def _run(self) -> None:
        while True:
            time.sleep(min(1.0, max(self.comm.timeout / 20, 0.05)))
            c = self.comm
            limit = c.timeout if c.training else max(c.timeout, SETUP_TIMEOUT)
            with self._lock:
                late = self.since is not None and time.monotonic() - self.since > limit
                what = self.what
            if late:
                print(f"{c.label}: error: rank {c.rank}: no answer from the other ranks for {limit:g} s "
                      f"(waiting in {what}): a rank died or hangs; ending all {c.size} ranks", file=sys.stderr,
                      flush=True)
                c.abort(1)
                return


# ============================================================================ MPI

def import_mpi():
    """mpi4py's MPI module, or a DistributedError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        if getattr(e, "name", "") and not str(e.name).startswith("mpi4py"):
            raise DistributedError(f"mpi4py is installed but cannot load an MPI library ({e}): {MPI_INSTALL}") from None
        raise DistributedError(f"distributed training over MPI needs mpi4py and an MPI library: {MPI_INSTALL}") from None
    except (RuntimeError, OSError) as e:   # mpi4py built against no MPI, or the library is missing
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"mpi4py is installed but cannot load an MPI library ({first}): {MPI_INSTALL}") from None
    return MPI


class MPICommunicator(Communicator):
    """mpi4py over host arrays; the uppercase buffer API for arrays (no pickling)."""

    backend = "mpi"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, label: str = "minigrad"):
        super().__init__()
        self.MPI = MPI = import_mpi()
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout, self.label = float(timeout), label
        self._watchdog = _Watchdog(self)
        # the ranks of this machine, by host name (not by shared memory, which MPIR_CVAR_NOLOCAL=1
        # turns off: the cores are shared all the same)
        with self.waiting("setup"):
            hosts = self.comm.allgather(MPI.Get_processor_name())
        mine = hosts[self.rank]
        self.local_rank = hosts[:self.rank].count(mine)
        self.local_size = hosts.count(mine)
        self.machines = len(set(hosts))

    def allreduce_sum_(self, buf):
        _check_flat(buf, "allreduce_sum_")
        if type(buf) is not np.ndarray:
            raise TypeError(f"the mpi backend reduces host (NumPy) arrays; got {type(buf).__module__}."
                            f"{type(buf).__name__} (use the nccl backend for device arrays)")
        with self.waiting("allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast_(self, buf, root: int = 0):
        _check_flat(buf, "broadcast_")
        with self.waiting("broadcast"):
            self.comm.Bcast(buf, root=root)
        return buf

    def broadcast_object(self, obj, root: int = 0):
        with self.waiting("broadcast"):
            return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj) -> list:
        with self.waiting("setup agreement"):
            return self.comm.allgather(obj)

    def barrier(self) -> None:
        with self.waiting("barrier"):
            self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # the launcher tears every rank and its own relays down on an abort: give them a moment to
        # pass on the line this rank just printed (without it the line was lost in 1 run of ~5)
        time.sleep(ABORT_GRACE)
        try:
            self.comm.Abort(code)
        finally:
            os._exit(code)

    def describe(self) -> str:
        return f"{self.size} ranks (mpi, {self.machines} machine{'s' if self.machines > 1 else ''})"


# ============================================================================ NCCL

def _nccl_dtype(nccl, dtype):
    names = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16",
             "bfloat16": "NCCL_BFLOAT16"}
    name = names.get(np.dtype(dtype).name)
    if name is None or not hasattr(nccl, name):
        raise TypeError(f"the nccl backend cannot reduce {np.dtype(dtype)} arrays")
    return getattr(nccl, name)


class NCCLCommunicator(Communicator):
    """NCCL through CuPy over device arrays, on CuPy's current stream (no host sync of its own).

    With more than one rank, MPI carries the NCCL id from rank 0, the small Python objects, the
    barrier and the abort; one rank without an MPI launch needs no MPI. Each rank uses the GPU
    ``local_rank % device count``. Host arrays given to a collective (evaluation losses) are
    uploaded, reduced and copied back.
    """

    backend = "nccl"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, label: str = "minigrad"):
        super().__init__()
        self.timeout, self.label = float(timeout), label
        try:
            import cupy
            from cupy.cuda import nccl
        except Exception as e:   # noqa: BLE001  (CuPy without NCCL raises more than ImportError)
            raise DistributedError(f"--dist nccl needs CuPy with NCCL ({type(e).__name__}: {e}); install the NCCL "
                                   "wheel matching CuPy (nvidia-nccl-cu12 or nvidia-nccl-cu13)") from None
        if not getattr(nccl, "available", True):
            raise DistributedError("--dist nccl: CuPy finds no NCCL library; install nvidia-nccl-cu12 or "
                                   "nvidia-nccl-cu13 to match CuPy")
        self.cupy, self.nccl = cupy, nccl
        env = launched()
        self.mpi = MPICommunicator(timeout, label) if env is not None and env[0] > 1 else None
        if self.mpi is not None:
            self.rank, self.size, self.local_rank = self.mpi.rank, self.mpi.size, self.mpi.local_rank
        self._watchdog = _Watchdog(self)          # one watchdog, reading this communicator's state
        if self.mpi is not None:
            self.mpi._watchdog = self._watchdog
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        if self.mpi is not None:
            uid = self.mpi.broadcast_object(uid)
        with self.waiting("NCCL setup"):
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def _on_device(self, buf, fn):
        if type(buf) is np.ndarray:        # a host array: through the device and back
            dev = self.cupy.asarray(buf)
            fn(dev)
            with self.waiting("allreduce"):
                host = dev.get()
            if buf.flags.writeable:         # a read-only root buffer of a broadcast keeps its values
                buf[...] = host
            return buf
        fn(buf)
        return buf

    def allreduce_sum_(self, buf):
        _check_flat(buf, "allreduce_sum_")

        def run(b):
            self.comm.allReduce(b.data.ptr, b.data.ptr, b.size, _nccl_dtype(self.nccl, b.dtype),
                                self.nccl.NCCL_SUM, self._stream())
        return self._on_device(buf, run)

    def broadcast_(self, buf, root: int = 0):
        _check_flat(buf, "broadcast_")

        def run(b):
            self.comm.bcast(b.data.ptr, b.size, _nccl_dtype(self.nccl, b.dtype), root, self._stream())
        return self._on_device(buf, run)

    def broadcast_object(self, obj, root: int = 0):
        return self.mpi.broadcast_object(obj, root) if self.mpi is not None else obj

    def allgather_object(self, obj) -> list:
        return self.mpi.allgather_object(obj) if self.mpi is not None else [obj]

    def barrier(self) -> None:
        with self.waiting("barrier"):
            self.cupy.cuda.get_current_stream().synchronize()
        if self.mpi is not None:
            self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        if self.mpi is not None:
            self.mpi.abort(code)
        super().abort(code)

    def describe(self) -> str:
        return f"{self.size} rank{'s' if self.size > 1 else ''} (nccl)"


# ============================================================================ the current communicator

_current: Communicator = Communicator()


def current() -> Communicator:
    """The communicator `init` made (the single-process one until then)."""
    return _current


def init(backend: str | None = None, *, device: str = "cpu", timeout: float = DEFAULT_TIMEOUT,
         label: str = "minigrad") -> Communicator:
    """Make the communicator for ``backend`` (see choose_backend) and make it the current one."""
    global _current
    name = choose_backend(backend, device)
    if name == "single":
        comm = Communicator()
    elif name == "mpi":
        comm = MPICommunicator(timeout, label)
    else:
        comm = NCCLCommunicator(timeout, label)
    comm.timeout, comm.label = float(timeout), label
    _current = comm
    return comm


def reset() -> None:
    """Back to the single-process communicator (tests; a finished in-process run)."""
    global _current
    _current = Communicator()


def rank() -> int:
    return _current.rank


def size() -> int:
    return _current.size


def local_rank() -> int:
    return _current.local_rank


def broadcast_parameters(model, root: int = 0) -> None:
    _current.broadcast_parameters(model, root)


def allreduce_mean_(buf):
    return _current.allreduce_mean_(buf)


def barrier() -> None:
    _current.barrier()


# ============================================================================ one flat gradient buffer

def _pack(arrays):
    """[(flat buffer, views, member indices)] per dtype, in first-seen order: each array's values
    copied into its view, views starting on ALIGN-element boundaries."""
    groups: dict = {}
    for i, a in enumerate(arrays):
        groups.setdefault(np.dtype(a.dtype), []).append(i)
    out = []
    for dtype, members in groups.items():
        xp = get_array_module(arrays[members[0]])
        offsets, n = [], 0
        for i in members:
            offsets.append(n)
            n += -(-arrays[i].size // ALIGN) * ALIGN
        if xp is np:                    # on a 64-byte boundary, as the views' offsets assume
            raw = np.zeros(n + 64 // dtype.itemsize, dtype=dtype)
            skip = (-raw.ctypes.data % 64) // dtype.itemsize
            flat = raw[skip:skip + n]
        else:                           # device allocations are 256-byte aligned
            flat = xp.zeros(n, dtype=dtype)
        views = [flat[o:o + arrays[i].size] for o, i in zip(offsets, members)]
        for v, i in zip(views, members):
            v[...] = arrays[i].reshape(-1)
        out.append((flat, views, members))
    return out


class GradientBuffer:
    """The gradients of ``params`` averaged over the ranks with one allreduce per step.

    Layout: one flat contiguous buffer per gradient dtype (one in practice), parameter i's gradient
    at its own 64-byte-aligned view. ``reduce_`` copies each ``p.grad`` into its view, runs one
    ``allreduce_mean_`` on the buffer, and leaves each ``p.grad`` a view of the result (no copy back).
    A second allreduce, of 3 + len(params) float64 on the same array module, carries the loss, the
    stop requests (how many ranks, the sum of their signal numbers) and which parameters got a
    gradient on some rank (those and only those get one back), so a parameter that no rank touched
    keeps ``grad=None``, as in one process.

    On a GPU nothing here waits for the device except the one read of that small vector (the host
    sync of the step); on the CPU the two allreduces are the only waits.
    """

    def __init__(self, params):
        from .tensor import Tensor

        self._Tensor = Tensor
        self.params = [p for p in params if p.requires_grad]
        self.groups = _pack([p.data for p in self.params])     # parameters' dtypes = their gradients'
        self.view_of = {}
        for flat, views, members in self.groups:
            for v, i in zip(views, members):
                self.view_of[i] = v
        self.xp = get_array_module(self.groups[0][0])
        # host seconds, summed over steps: copying the gradients in, the gradient allreduce (on a GPU:
        # only its launch), the small one (on a GPU: with the wait for the device)
        self.times = {"pack": 0.0, "allreduce": 0.0, "info": 0.0}

    def reduce_(self, comm: Communicator, loss, stop: int = 0) -> tuple[float, int]:
        """Average the gradients over the ranks in place; returns (the mean of the ranks' ``loss``
        as a host float, the stop request of the ranks: 0 for none, else the signal number they
        were stopped by, SIGINT's when they differ). ``loss``: a host float or a 0-d device array;
        ``stop``: this rank's request (a signal number; 0 for none)."""
        t0 = time.perf_counter()
        P = len(self.params)
        info = np.zeros(3 + P, np.float64)                 # [loss, stopping ranks, their signals' sum, has_grad...]
        info[1], info[2] = float(bool(stop)), float(stop)
        device_loss = not isinstance(loss, (float, int, np.floating))
        if not device_loss:
            info[0] = float(loss)
        for i, p in enumerate(self.params):
            view = self.view_of[i]
            if p.grad is None:
                view.fill(0)
            else:
                info[3 + i] = 1.0
                if p.grad.data is not view:
                    view[...] = p.grad.data.reshape(-1)
        t1 = time.perf_counter()
        for flat, _, _ in self.groups:
            comm.allreduce_mean_(flat)
        t2 = time.perf_counter()
        if self.xp is np:
            comm.allreduce_sum_(info)
        else:                                            # on the device; reading it back is the step's sync
            dev = self.xp.asarray(info)
            if device_loss:
                dev[0] = loss
            comm.allreduce_sum_(dev)
            checks = backend.deferred_flags()            # this rank's checks of its data, read with it
            if checks is not None:
                dev = self.xp.concatenate((dev, checks.astype(np.float64)))
            with comm.waiting("gradient allreduce (device)"):
                host = backend.host_copy(dev)
            info = host[:3 + P]
            if checks is not None:                       # a failed one raises here, on its rank
                backend.raise_deferred_checks(host[3 + P:] > 0)
        t3 = time.perf_counter()
        for i, p in enumerate(self.params):
            if info[3 + i] > 0:
                p.grad = self._Tensor._make(self.view_of[i].reshape(p.data.shape), False)
            else:
                p.grad = None
        for k, dt in (("pack", t1 - t0), ("allreduce", t2 - t1), ("info", t3 - t2)):
            self.times[k] += dt
        stopping, signals = int(info[1]), int(info[2])
        stop = 0 if not stopping else (signals // stopping if signals % stopping == 0 else int(signal.SIGINT))
        return float(info[0]) / comm.size, stop
