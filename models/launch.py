"""How `minigrad train` runs on N ranks (`mpiexec -n N minigrad train ...`, or `--dist mpi|nccl|none`).

    result = launch.main_on_ranks(main, args, "train")   # the job's main(args) on this rank
    ckpt = launch.from_rank0(lambda: checkpoint_to_resume(...))   # inside main: rank 0 reads, all get it
    launch.resume_ranks(ckpt, train_opts, given_train)   # the batch when the number of ranks changed

What a person sees: rank 0 alone prints (the other ranks' stdout goes to /dev/null, their progress
bar is off) and writes the log, the plot and the checkpoints (models/trainer.py). An error in the
setup (a bad flag, a missing file on one machine) is agreed on by all ranks and printed once, by
rank 0, and every rank exits 1. An error on one rank during training is printed by that rank, in
one line naming it, and ends the job (MPI_Abort); a rank that dies is noticed by the launcher
(MPICH ends the others at once) or, failing that, by the others' watchdog within --dist-timeout.
MPICH's mpiexec reports a killed rank in its own banner; `minigrad launch -n N train ...`
(models/mpi_launch.py) runs mpiexec and says it in one line instead.

The global batch is the per-rank batch times the number of ranks: `--batch-size B` on N ranks
trains on N·B sequences per micro-batch (× --grad-accum micro-batches per step), the same batches
one process draws with `--batch-size N·B`. A checkpoint records its number of ranks; resuming it on
another number keeps its global batch (the per-rank batch becomes global / N) when that divides
evenly, and otherwise asks for an explicit --batch-size.
"""
from __future__ import annotations

import os
import sys

from minigrad import distributed
from minigrad.models.train_config import TrainError

# Under `minigrad launch` (models/mpi_launch.py, which sets LAUNCH_ENV=1) each rank's first line on
# stderr, which the launcher reads and drops: LAUNCH_MARKER + {"rank", "pid", "host", "cwd"} as JSON.
LAUNCH_ENV = "MINIGRAD_LAUNCH"
LAUNCH_MARKER = "minigrad-launch: "

# What the command is called in error lines (set by main_on_ranks).
_label = "minigrad train"


def add_dist_args(g) -> None:
    """--dist and --dist-timeout, in `minigrad train`'s "run" group."""
    g.add_argument("--dist", choices=["mpi", "nccl", "none"], default=None,
                   help="data parallelism over processes/machines: mpi (CPUs; mpi4py), nccl (GPUs; CuPy's NCCL), "
                        "none. Default: mpi (nccl with --device cuda) when started by mpiexec with more than "
                        "one process, else none. --batch-size is per rank: the global batch is N times it")
    g.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT, metavar="S",
                   help="seconds a rank waits for the others in one step before it reports them lost and ends "
                        f"the job (default {distributed.DEFAULT_TIMEOUT:g}; before training starts at least "
                        f"{distributed.SETUP_TIMEOUT:g})")


def main_on_ranks(main, args, cmd: str = "train", lock=None):
    """``main(args)`` on this rank, with the communicator that --dist and the launcher ask for;
    ``lock()``: a context manager held around it by the rank that writes (the --out-dir lock).

    One process (the default): just ``main(args)``. On several ranks: non-zero ranks print nothing
    to stdout; an error before training starts is agreed on and raised on rank 0 only (the others
    raise it with stderr silenced); an error during training is printed here and ends every rank.
    """
    import contextlib

    lock = lock or contextlib.nullcontext
    global _label
    _label = f"minigrad {cmd}"
    try:
        name = distributed.choose_backend(getattr(args, "dist", None), getattr(args, "device", "cpu"))
    except distributed.DistributedError as e:
        raise TrainError(str(e)) from None
    if name == "single":
        with lock():
            return main(args)
    env = distributed.launched()
    if env is not None:
        announce(env[1])
    timeout = getattr(args, "dist_timeout", distributed.DEFAULT_TIMEOUT)
    if not timeout > 0:
        raise TrainError(f"--dist-timeout must be positive, got {timeout}")
    try:
        comm = distributed.init(name, device=getattr(args, "device", "cpu"), timeout=timeout, label=_label)
    except distributed.DistributedError as e:
        env = distributed.launched()
        if env is not None and env[1] != 0:    # every rank fails alike: rank 0 says it
            sys.stderr = open(os.devnull, "w")
        raise TrainError(str(e)) from None
    limit_blas_threads(comm)
    if comm.rank != 0:
        sys.stdout = open(os.devnull, "w")
    elif not getattr(args, "quiet", False):
        print(f"{comm.describe()}: rank 0 logs and checkpoints; global batch = {comm.size} x --batch-size",
              file=sys.stderr)
    try:
        with lock() if comm.rank == 0 else contextlib.nullcontext():
            return main(args)
    except BaseException as e:      # every failure must end the ranks cleanly
        _fail_on_ranks(comm, e)
        raise
    finally:
        distributed.reset()


def announce(rank: int) -> None:
    """Under `minigrad launch`: this rank's start line (its rank, PID, machine and working
    directory), which the launcher reads and drops."""
    if os.environ.get(LAUNCH_ENV) != "1":
        return
    import json
    import socket

    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "cwd": os.getcwd()}
    # one write of the whole line: print() writes the text and its newline separately, and mpiexec
    # forwards each write as it comes, so two ranks' lines could arrive interleaved on one line
    sys.stderr.flush()
    os.write(sys.stderr.fileno(), (LAUNCH_MARKER + json.dumps(info) + "\n").encode())


def _fail_on_ranks(comm, e: BaseException) -> None:
    """Agree on a setup error (returns: the caller re-raises it, silenced off rank 0), or print a
    training-time error naming this rank and end the job (does not return)."""
    if isinstance(e, SystemExit):
        return
    if isinstance(e, KeyboardInterrupt):
        print(f"\n{_label}: interrupted on rank {comm.rank}; ending all {comm.size} ranks (the last checkpoint, "
              "if any, is kept)", file=sys.stderr, flush=True)
        comm.abort(130)
    if getattr(e, "all_ranks", False):                 # raised alike on every rank
        if comm.rank != 0:
            sys.stderr = open(os.devnull, "w")
        if isinstance(e, distributed.DistributedError):
            raise TrainError(str(e)) from None
        return
    message = f"{type(e).__name__}: {e}" if not _is_user_error(e) else str(e)
    message = message.strip().splitlines()[0] if message.strip() else type(e).__name__
    if type(e).__module__.startswith("mpi4py"):       # a collective failed: another rank went away
        message = f"lost the other ranks ({message})"
    elif not _is_user_error(e):                       # a bug: its traceback, on this rank
        import traceback
        traceback.print_exc()
    if not comm.training:                             # setup: the others wait at the next agreement
        try:
            comm.agree(message)
        except distributed.DistributedError as agreed_error:
            if comm.rank != 0:
                sys.stderr = open(os.devnull, "w")
            raise TrainError(str(agreed_error)) from None
    print(f"{_label}: error: rank {comm.rank}: {message}; ending all {comm.size} ranks", file=sys.stderr, flush=True)
    comm.abort(1)


def _is_user_error(e) -> bool:
    """The errors the commands report in one line (no traceback)."""
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data import DataError
    from minigrad.models.memory import ModelTooLargeError
    from minigrad.models.tasks import TaskError
    from minigrad.models.tokenize import TokenizerError

    return isinstance(e, (TrainError, CheckpointError, DataError, TaskError, TokenizerError, ModelTooLargeError,
                          distributed.DistributedError))


def from_rank0(fn):
    """``fn()`` run on rank 0 alone (reading or checking --out-dir, which may be on rank 0's machine
    only); its result reaches every rank: None, or a Checkpoint whose arrays travel by Bcast. An
    exception on rank 0 is raised on every rank alike (and printed by rank 0 only)."""
    comm = distributed.current()
    if comm.backend == "single":
        return fn()
    comm.agree()                       # every rank is here: none failed before
    result, error = None, None
    if comm.rank == 0:
        try:
            result = fn()
        except Exception as e:          # noqa: BLE001  (sent to the others, re-raised below)
            error = e
    from minigrad.models.checkpoint import Checkpoint

    head = None
    if comm.rank == 0:
        if error is not None:
            head = ("error", type(error).__name__, str(error))
        elif isinstance(result, Checkpoint):
            specs = {g: {k: (a.shape, a.dtype.str) for k, a in arrays.items()} for g, arrays in result.arrays.items()}
            head = ("checkpoint", str(result.path), result.meta, specs)
        else:
            head = ("value", result)
    head = comm.broadcast_object(head)
    if head[0] == "error":
        if comm.rank == 0:
            raise distributed.agreed(error)
        raise distributed.agreed(_rebuild_error(head[1], head[2]))
    if head[0] == "value":
        return head[1]
    from pathlib import Path

    import numpy as np

    _, path, meta, specs = head
    arrays = {}
    for group, names in specs.items():
        arrays[group] = {}
        for name, (shape, dtype) in names.items():
            a = result.arrays[group][name] if comm.rank == 0 else np.empty(shape, np.dtype(dtype))
            a = np.ascontiguousarray(a)
            comm.broadcast_(a.reshape(-1))
            arrays[group][name] = a
    return result if comm.rank == 0 else Checkpoint(Path(path), meta, arrays)


def _rebuild_error(kind: str, message: str) -> Exception:
    from minigrad.models.checkpoint import CheckpointError

    return {"CheckpointError": CheckpointError}.get(kind, TrainError)(message)


def resume_ranks(ckpt, train_opts: dict, given_train: dict) -> dict:
    """The training options of a resumed run on this number of ranks. Same number as the
    checkpoint: unchanged. Another number: the checkpoint's global batch is kept (per-rank batch =
    global / ranks) when --batch-size was not given and it divides evenly; otherwise refused."""
    ranks = distributed.current().size
    saved = int(ckpt.meta.get("ranks", 1))
    if saved == ranks:
        return train_opts
    if "workers" not in given_train:    # the saved worker count suited the saved number of ranks
        train_opts = {k: v for k, v in train_opts.items() if k != "workers"}
    if "batch_size" in given_train:
        return train_opts
    global_batch = int(ckpt.meta["train_config"]["batch_size"]) * saved
    if global_batch % ranks:
        raise TrainError(f"checkpoint {ckpt.path} was trained on {saved} rank{'s' if saved > 1 else ''} with a "
                         f"global batch of {global_batch}, which {ranks} ranks cannot share evenly; resume on "
                         f"{saved} rank{'s' if saved > 1 else ''}, or pass --batch-size to choose a new per-rank batch")
    out = dict(train_opts, batch_size=global_batch // ranks)
    if distributed.current().rank == 0:
        print(f"resuming a {saved}-rank checkpoint on {ranks} rank{'s' if ranks > 1 else ''}: --batch-size "
              f"{out['batch_size']} per rank keeps its global batch of {global_batch}", file=sys.stderr)
    return out


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def limit_blas_threads(comm) -> None:
    """Several ranks on one machine: each rank's BLAS gets its share of the cores (a one-thread
    BLAS for two ranks on two cores). Left alone without threadpoolctl or with one rank per machine:
    oversubscribed BLAS threads spin against each other and can make a step several times slower."""
    local = getattr(comm, "local_size", 1)
    if local <= 1:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=max(1, cores() // local), user_api="blas")


def default_workers(train_opts: dict, given_train: dict) -> dict:
    """On several ranks, unless --workers was given: one data-parallel worker per rank when the
    ranks of this machine already fill its cores (two ranks on two cores), else as many as the
    single-process default allows."""
    comm = distributed.current()
    if comm.backend == "single" or "workers" in given_train or "workers" in train_opts:
        return train_opts
    from minigrad.models.train_config import TrainConfig

    local = max(1, getattr(comm, "local_size", 1))
    return dict(train_opts, workers=max(1, min(TrainConfig.workers, cores() // local)))
