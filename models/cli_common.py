"""What the command modules share: the default run directory, the device check, the flags a
person gave, the checkpoint that --resume continues and the one a fresh run must not overwrite,
the run directory's lock, and how a run's end is reported (exit statuses, one-line I/O errors);
for the training jobs (models/train.py, models/seq2seq_train.py) the handler around a job
(``run_training``) and the options a fresh or resumed run starts from (``start_or_resume``).

models/cli.py (train, generate, bench train), models/train.py (the GPT job), models/seq2seq_train.py
and models/scaling.py import this module; it imports none of them. Only the standard library is
imported at module level, so building the parsers (`minigrad --help`) stays instant.
"""
from __future__ import annotations

import contextlib
import errno
import shlex
import sys

DEFAULT_OUT = "out-shakespeare"


def fail(cmd: str, message: str, code: int = 1) -> int:
    """Print `minigrad CMD: error: MESSAGE` on stderr; returns the exit code."""
    print(f"minigrad {cmd}: error: {message}", file=sys.stderr)
    return code


def check_device(device: str) -> str | None:
    """None if usable, else a one-line reason."""
    if device != "cuda":
        return None
    try:
        import cupy
    except Exception:   # noqa: BLE001  (a broken CuPy install raises more than ImportError)
        return "--device cuda needs CuPy (pip install cupy-cuda12x) and an NVIDIA GPU; CuPy is not importable"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:   # noqa: BLE001  (any CUDA runtime failure means: no usable GPU)
        return f"--device cuda: CuPy cannot see a GPU ({type(e).__name__})"
    return None if n > 0 else "--device cuda: CuPy sees no GPU"


def given(args, names) -> dict:
    """The flags among ``names`` that were given (those that are not None)."""
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def checkpoint_to_resume(out_dir, force: bool, model: str, not_this: str):
    """The checkpoint that --resume continues: refuses --force alongside it, and a checkpoint of
    another model kind (``not_this`` ends the message, e.g. "not a GPT")."""
    from minigrad.models.checkpoint import load_checkpoint
    from minigrad.models.train_config import TrainError

    if force:
        raise TrainError("--resume and --force contradict each other")
    ckpt = load_checkpoint(out_dir)
    if ckpt.meta.get("model") != model:
        raise TrainError(f"checkpoint {ckpt.path} holds a {ckpt.meta.get('model')!r} model, {not_this}")
    return ckpt


def refuse_to_overwrite(out_dir, force: bool) -> None:
    """A fresh run may not replace a checkpoint in ``out_dir`` unless --force was given."""
    from minigrad.models.checkpoint import has_checkpoint
    from minigrad.models.train_config import TrainError

    if has_checkpoint(out_dir) and not force:
        raise TrainError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                         "or --force to start afresh (or choose another --out-dir)")


def locked_out_dir(out_dir, resume: bool = False):
    """The training run's hold on ``out_dir`` (models/checkpoint.py: lock_run_dir): a second run into
    the same folder stops at once with one line naming the PID that holds it, having written nothing.
    --resume into a folder that does not exist takes no lock (it fails, saying so). With MPI, only
    the rank that writes should take it."""
    from pathlib import Path

    from minigrad.models.checkpoint import lock_run_dir

    if out_dir is None or (resume and not Path(out_dir).exists()):
        return contextlib.nullcontext()
    return lock_run_dir(out_dir)


def resume_command(out_dir, extra: str = "") -> str:
    """The command that continues the run in ``out_dir`` (for the messages of an interrupted run)."""
    return f"minigrad train{extra} --out-dir {shlex.quote(str(out_dir))} --resume"


def interrupted_status(result: dict) -> int:
    """The exit status of a run a signal stopped: 128 + its number (SIGINT 130, SIGTERM 143,
    SIGHUP 129, a closed output pipe 141), as a shell reports a process that signal killed."""
    import signal

    return 128 + int(result.get("signal") or signal.SIGINT)


def os_error_line(e: OSError) -> str:
    """An OSError in one line: what failed, on which file, and for a full disk what to do."""
    what = e.strerror or str(e) or type(e).__name__
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    hint = "; free some space and run again" if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else ""
    return f"{what}{where}{hint}"



# --------------------------------------------------------------------------- the training jobs
def run_training(job, args, out_dir, errors: tuple, last_line) -> int:
    """The handler of a `minigrad train` job: the device check, then ``job(args)`` on each rank
    (mpiexec / --dist; the writing rank holds ``out_dir``'s lock), its user errors (``errors``), a
    failed read or write and a Ctrl-C before the loop each in one line, a signal's exit status;
    else prints ``last_line(result)`` last. Returns the exit code."""
    problem = check_device(args.device)
    if problem:
        return fail("train", problem)
    from minigrad.models.launch import main_on_ranks
    try:
        result = main_on_ranks(job, args, "train", lock=lambda: locked_out_dir(out_dir, args.resume))
    except errors as e:
        return fail("train", str(e))
    except BrokenPipeError:    # stdout closed: the console script exits quietly
        raise
    except OSError as e:       # a write or read that failed outside the trainer's own (e.g. the data cache)
        return fail("train", os_error_line(e))
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C inside it
        print("\nminigrad train: interrupted; nothing saved (the last checkpoint, if any, is kept)", file=sys.stderr)
        return 130
    if result.get("interrupted"):
        return interrupted_status(result)
    print(last_line(result))
    return 0


def start_or_resume(args, out_dir, model: str, not_this: str, model_flags, defaults=None, check_saved=None):
    """What a training job starts from: (checkpoint or None, training options, model flags given).

    --resume: the checkpoint in ``out_dir`` (read on rank 0, see launch.from_rank0), checked by
    ``check_saved(ckpt)``; a model flag that differs from its model_config is refused; the
    training options are its train_config with the flags given on top (so --lr, --max-iters and
    --dtype override it; a new --dtype is said on stderr), fitted to this number of ranks.
    A fresh run: ``defaults`` with the flags given on top; a checkpoint in ``out_dir`` is not
    overwritten without --force. Either way the data-parallel workers default per rank."""
    from minigrad import distributed
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.launch import default_workers, from_rank0, resume_ranks
    from minigrad.models.train_config import TrainConfig

    given_train = given(args, TrainConfig.__dataclass_fields__)
    given_model = given(args, model_flags)
    ckpt = None
    if args.resume:
        ckpt = from_rank0(lambda: checkpoint_to_resume(out_dir, args.force, model, not_this))
        if check_saved is not None:
            check_saved(ckpt)
        saved_model = ckpt.meta.get("model_config") or {}
        for k, v in given_model.items():
            if saved_model.get(k) != v:
                raise CheckpointError(f"checkpoint {ckpt.path} has {k}={saved_model.get(k)}, but "
                                      f"--{k.replace('_', '-')} {v} was given")
        saved_train = ckpt.meta.get("train_config") or {}
        train_opts = resume_ranks(ckpt, dict(saved_train, **given_train), given_train)
        saved_dtype = saved_train.get("dtype", "float32")
        if given_train.get("dtype", saved_dtype) != saved_dtype and distributed.rank() == 0:
            print(f"resuming a {saved_dtype} run in {given_train['dtype']}: --dtype overrides the checkpoint's "
                  "(its weights and AdamW moments are float32 either way"
                  + ("; the float16 loss scale starts afresh)" if given_train["dtype"] == "float16" else ")"),
                  file=sys.stderr)
    else:
        from_rank0(lambda: refuse_to_overwrite(out_dir, args.force))
        train_opts = dict(defaults or {}, **given_train)
    return ckpt, default_workers(train_opts, given_train), given_model
