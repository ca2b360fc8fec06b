"""What the command modules share: the default run directory, the device check, the flags a
person gave, the checkpoint that --resume continues and the one a fresh run must not overwrite.

models/cli.py (train, generate, bench train), models/train.py (the GPT job), models/seq2seq_train.py
and models/scaling.py import this module; it imports none of them. Only the standard library is
imported at module level, so building the parsers (`minigrad --help`) stays instant.
"""
from __future__ import annotations

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
