"""Data parallelism over the CPU's cores: each worker takes a slice of the micro-batch.

On a 2-core machine, one process with a two-thread BLAS leaves a core idle whenever it runs an
op outside the matmuls (layernorm, GELU, attention, the optimizer's loops). Here the micro-batch
is cut into row slices instead, and each slice's forward and backward runs on its own core with
a one-thread BLAS (the default GPT step: 33.1 ms in one process, 27.6 ms on two workers):

  "process"  (Linux, the default) this process takes slice 0; forked children take the others.
             The parameters live in shared memory, so the children always see the current
             weights, and each child writes its gradients into a shared buffer. Each process has
             its own interpreter, so the Python between ops does not wait for a lock.
  "thread"   (where fork is unsafe or unavailable) worker threads in this process. NumPy, BLAS
             and the native loops release the GIL while they compute; the Python between ops
             is serialised (measured at the default GPT size: a slice ran 14% slower beside the
             other thread than alone, and the step took 30.3 ms against 28.7 ms with processes).

Ending: a forked worker dies with the process that forked it, however that one ends (SIGKILL
included): it asks the kernel for SIGKILL at its parent's death (Linux's PR_SET_PDEATHSIG), and it
closes what it inherited of the caller's pipes, sockets, terminal and files open for writing
(stdout, stderr, log.jsonl, the other workers' pipes), so a pipeline like `minigrad train | tee log`
ends with the trainer. Workers ignore SIGINT, SIGTERM and SIGHUP, which a shell, a scheduler or a
closing terminal send to the whole process group: the parent handles them and ends its workers. A
worker that dies (the out-of-memory killer's SIGKILL, say) is reported by number, PID and signal.

Determinism: each slice's loss is scaled by its share of the rows, its gradients come from
minigrad.grad (no .grad is touched by a worker), and the slices' gradients are added in slice
order after all workers finish. The result does not depend on timing, and running the slices one
after another in this process (``concurrent=False``) gives the same numbers bit for bit.
"""
from __future__ import annotations

import atexit
import ctypes
import math
import mmap
import multiprocessing
import multiprocessing.util  # (its exit handler must be registered before _stop_all_workers)
import os
import signal
import stat
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import minigrad
from minigrad import Tensor
from minigrad.nn.layers import Dropout
from minigrad.backend import is_device_array
from minigrad.optim import clip_grad_norm_, grad_sq_norm


def split_rows(batch, n: int):
    """A tuple of arrays sharing the leading (row) dimension -> n (slice, weight) pairs, weight =
    the slice's share of the rows. Fewer pairs when there are fewer rows than n."""
    rows = len(batch[0])
    bounds = np.linspace(0, rows, min(n, rows) + 1).round().astype(int)
    return [(tuple(a[lo:hi] for a in batch), (hi - lo) / rows) for lo, hi in zip(bounds[:-1], bounds[1:])]


def split_rows_by_targets(batch, n: int, ignore_index: int):
    """split_rows for a batch whose last array holds targets and whose loss is the mean over the
    targets != ignore_index: each slice's weight is its share of those targets (every row has one)."""
    parts = split_rows(batch, n)
    total = int(np.count_nonzero(batch[-1] != ignore_index))
    return [(b, int(np.count_nonzero(b[-1] != ignore_index)) / total) for b, _ in parts]


def balanced(items, sizes, n: int) -> list[list]:
    """items split into n lists of about equal total size (largest first, each to the lightest list)."""
    groups, load = [[] for _ in range(n)], [0] * n
    for size, i in sorted(((s, i) for i, s in enumerate(sizes)), key=lambda t: -t[0]):
        j = load.index(min(load))
        groups[j].append(items[i])
        load[j] += size
    return [g for g in groups if g]


def pooled_step(opt, pool, workers: int) -> None:
    """``opt.step()`` with the per-parameter updates split into ``workers`` groups of about equal
    size that run on ``pool`` (a concurrent.futures executor). The updates are independent per
    parameter and release the GIL inside NumPy and the native loops, so the result equals the
    serial step bit for bit."""
    work = opt.params_with_grad()

    def run(items):
        for p, group in items:
            opt.update(p, group)

    list(pool.map(run, balanced(work, [p.data.size for p, _ in work], workers)))


def _blas_controller():
    """A threadpoolctl controller for the loaded BLAS, or None when threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def default_backend() -> str:
    return "process" if sys.platform.startswith("linux") else "thread"


class WorkerError(RuntimeError):
    """A data-parallel worker failed; the message carries the worker's exception."""


def _slice_grads(model, loss_fn, params, part, scale):
    """(loss of the slice, its gradients scaled by weight·scale) with minigrad.grad."""
    batch, weight = part
    loss = loss_fn(model, batch)
    root = Tensor._make(loss._xp.asarray(np.array(weight * scale, dtype=loss.dtype)), False)
    return float(loss.item()), minigrad.grad(loss, params, grad_outputs=root)


def _shared_array(n: int, dtype) -> np.ndarray:
    """n elements in an anonymous shared mapping: a forked child writes to the same pages."""
    dtype = np.dtype(dtype)
    buf = mmap.mmap(-1, max(n * dtype.itemsize, 1))       # MAP_SHARED | MAP_ANONYMOUS
    return np.frombuffer(buf, dtype=dtype, count=n)


PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """In a forked worker: have the kernel send SIGKILL when the parent dies (Linux), and exit at
    once if it already has (it died between the fork and the prctl)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)


def _close_inherited(keep: set) -> None:
    """In a forked worker: point stdin, stdout and stderr at /dev/null, and close every other
    inherited descriptor that is a pipe, a socket, a terminal or a file open for writing, except
    those in `keep`. Read-only files stay open (the memory-mapped token files use theirs)."""
    import fcntl

    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:        # no /proc: the standard streams at least are released
        return
    for fd in fds:
        if fd <= 2 or fd in keep:
            continue
        try:
            mode = os.fstat(fd).st_mode
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        except OSError:    # the listing's own descriptor, already closed
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or writable:
            os.close(fd)


def _child_loop(conn, model, loss_fn, params, grad_views, parent_pid):
    """A forked worker: for each (slice, scale) received, write its gradients into grad_views and
    reply ("ok", loss, which gradients are None) or ("error", message). None or the parent's
    end of the pipe closing ends the loop; the parent's death kills it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)                # the parent's to handle: it ends its workers
    _die_with_parent(parent_pid)
    _close_inherited({conn.fileno()})
    blas = _blas_controller()
    if blas is not None:
        blas.limit(limits=1, user_api="blas")
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        try:
            loss, grads = _slice_grads(model, loss_fn, params, msg[0], msg[1])
            for view, g in zip(grad_views, grads):
                if g is not None:
                    view[...] = g.data
            conn.send(("ok", loss, [g is None for g in grads]))
        except BaseException as e:                         # report, keep serving
            conn.send(("error", f"{type(e).__name__}: {e}"))


def _worker_gone(number: int, proc) -> WorkerError:
    """The error for worker `number` (1-based: it computes slice `number`), which has ended: how."""
    proc.join(timeout=2)
    code = proc.exitcode
    if code is None:
        how = "stopped answering"
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}" + (" (the out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else "")
    else:
        how = f"exited with status {code}"
    return WorkerError(f"data-parallel worker {number} (PID {proc.pid}) {how}")


_LIVE = weakref.WeakSet()   # DataParallel objects with worker processes


def _stop_all_workers() -> None:
    """At exit, end the workers before multiprocessing's own exit handler would SIGTERM them, which
    they ignore, and then wait for them forever. atexit runs handlers last-registered first, and
    multiprocessing.util registers its handler when it is imported, so it is imported first."""
    for dp in list(_LIVE):
        dp.stop_workers()


atexit.register(_stop_all_workers)


class DataParallel:
    """Runs loss_fn(model, slice) and its backward for each slice on ``workers`` workers."""

    def __init__(self, model, loss_fn, workers: int, backend: str | None = None):
        self.model, self.loss_fn, self.workers = model, loss_fn, workers
        self.backend = backend or default_backend()
        if self.backend not in ("process", "thread"):
            raise ValueError(f"DataParallel: backend must be 'process' or 'thread', got {self.backend!r}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        # a thread pool in every case: the gradient sums and the optimizer's loops use it too
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="minigrad-dp") if workers > 1 else None
        self._blas = _blas_controller() if workers > 1 else None
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
        self._children = []                # (process, connection, gradient views), started lazily
        self._weights = None               # the shared arrays the parameters hold (process backend)
        self.grad_norm = None              # the global norm of .grad after the last step (host arrays)
        self.norm_on_device = False        # device arrays: clip_grad_norm_ measures it on the device

    def can_run_concurrently(self) -> bool:
        """False when workers would change the result or the measurement: one worker, arrays not
        in host memory, no threadpoolctl to pin BLAS to one thread per worker, active dropout
        (one random stream), or the op profiler recording (it is process-wide)."""
        from minigrad import autograd

        if self.pool is None or self._blas is None or autograd._profiler is not None:
            return False
        if any(type(p.data) is not np.ndarray for p in self.params):
            return False
        return not any(m.p > 0 and m.training for m in self._dropouts)

    # ---- the process backend
    def _share_weights(self) -> None:
        """Move every trainable parameter's array into shared memory (again, if one was replaced,
        as load_state_dict does), so that forked workers see each optimizer update. Parameters
        only: a buffer that the model changed during training would not reach the workers."""
        if self._weights is not None and all(p.data is v for p, v in zip(self.params, self._weights)):
            return
        self._weights = []
        for p in self.params:
            v = _shared_array(p.data.size, p.data.dtype).reshape(p.data.shape)
            v[...] = p.data
            p.data = v
            self._weights.append(v)
        self.stop_workers()              # children forked earlier hold the old arrays

    def _start_children(self) -> None:
        self._share_weights()
        if self._children:
            return
        ctx = multiprocessing.get_context("fork")
        for _ in range(self.workers - 1):
            grads = [_shared_array(p.data.size, p.data.dtype).reshape(p.data.shape) for p in self.params]
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_loop, daemon=True, name="minigrad-dp",
                               args=(child, self.model, self.loss_fn, self.params, grads, os.getpid()))
            with warnings.catch_warnings():   # Python >= 3.12 warns on fork with BLAS threads alive;
                warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
                proc.start()                  # the child only runs its main thread, with one-thread BLAS
            child.close()
            self._children.append((proc, parent, grads))
        _LIVE.add(self)

    def _run_processes(self, parts, scale):
        self._start_children()
        others = parts[1:]
        try:
            for i, ((proc, conn, _), part) in enumerate(zip(self._children, others), 1):
                try:
                    conn.send((part, scale))
                except OSError:            # BrokenPipeError, ConnectionResetError: it is gone
                    raise _worker_gone(i, proc) from None
            with self._blas.limit(limits=1, user_api="blas"):
                first = _slice_grads(self.model, self.loss_fn, self.params, parts[0], scale)
            results = [first]
            for i, (proc, conn, grads) in enumerate(self._children[:len(others)], 1):
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    raise _worker_gone(i, proc) from None
                if reply[0] != "ok":
                    raise WorkerError(f"data-parallel worker failed: {reply[1]}")
                results.append((reply[1], [None if none else Tensor._make(g, False)
                                           for g, none in zip(grads, reply[2])]))
        except BaseException:
            self.stop_workers()          # replies may be pending: start clean next time
            raise
        return results

    def stop_workers(self) -> None:
        """End the worker processes (the next concurrent step forks new ones)."""
        for proc, conn, _ in self._children:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            conn.close()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()                # it ignores SIGTERM (see _child_loop)
                proc.join()
        self._children = []
        _LIVE.discard(self)

    # ---- one step
    def step(self, parts, scale: float = 1.0, concurrent: bool | None = None) -> float:
        """Accumulate scale·Σ weight·∇loss(slice) into each parameter's .grad; returns Σ weight·loss."""
        if concurrent is None:
            concurrent = self.can_run_concurrently()
        concurrent = concurrent and 1 < len(parts) <= self.workers
        if concurrent and self.backend == "process":
            results = self._run_processes(parts, scale)
        elif concurrent:
            with self._blas.limit(limits=1, user_api="blas"):
                results = list(self.pool.map(
                    lambda part: _slice_grads(self.model, self.loss_fn, self.params, part, scale), parts))
        else:
            results = [_slice_grads(self.model, self.loss_fn, self.params, part, scale) for part in parts]

        sq = [0.0] * len(self.params)
        on_host = not any(is_device_array(p.data) for p in self.params[:1])   # a GPU: the norm at clip time

        def reduce(indices):              # each parameter's slice gradients, added in slice order
            for i in indices:
                grads = [r[1][i].data for r in results if r[1][i] is not None]
                p = self.params[i]
                if not grads:
                    sq[i] = grad_sq_norm(p.grad.data) if p.grad is not None and on_host else 0.0
                    continue
                total = grads[0] + grads[1] if len(grads) > 1 else grads[0].copy()
                for g in grads[2:]:
                    total += g
                if p.grad is None:
                    p.grad = Tensor._make(total, False)
                else:
                    p.grad.data += total
                if on_host:
                    sq[i] = grad_sq_norm(p.grad.data)     # while it is in cache, for gradient clipping

        indices = list(range(len(self.params)))
        if concurrent:
            list(self.pool.map(reduce, balanced(indices, [p.data.size for p in self.params], self.workers)))
        else:
            reduce(indices)
        self.grad_norm = math.sqrt(sum(sq)) if on_host else None
        self.norm_on_device = not on_host
        return float(sum(weight * r[0] for (_, weight), r in zip(parts, results)))

    # ---- after the step: clipping and the optimizer
    def clip_grad_norm_(self, max_norm: float, eps: float = 1e-6) -> float:
        """``optim.clip_grad_norm_`` over the parameters, with the global norm that ``step`` measured
        while each gradient was in cache (no second pass over the gradients)."""
        if self.norm_on_device:           # gradients on a GPU: norm and scaling there, no host sync
            return clip_grad_norm_(self.params, max_norm, eps)
        if self.grad_norm is None:
            raise RuntimeError("DataParallel.clip_grad_norm_: no step has run yet, so no norm was measured")
        coef = max_norm / (self.grad_norm + eps)
        if coef < 1.0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.data *= coef
        return self.grad_norm

    def optimizer_step(self, opt) -> None:
        """``opt.step()``, its per-parameter updates spread over the workers' threads when they may
        run concurrently (see can_run_concurrently)."""
        if self.can_run_concurrently():
            pooled_step(opt, self.pool, self.workers)
        else:
            opt.step()

    def close(self) -> None:
        self.stop_workers()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
