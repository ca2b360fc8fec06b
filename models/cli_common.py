"""What the command modules share: the default run directory, the device check, the flags a
person gave, the checkpoint that --resume continues and the one a fresh run must not overwrite,
the run directory's lock, and how a run's end is reported (exit statuses, one-line I/O errors).

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
