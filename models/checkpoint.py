"""Checkpoint I/O: safetensors for arrays, JSON for everything else, crash-safe writes.

Layout of a run directory:
    OUT/latest.json          {"checkpoint": "ckpt-0002000"}  (replaced atomically; the commit point)
    OUT/best.json            {"checkpoint": "ckpt-0001750"}  the best validation loss so far (--keep-best)
    OUT/ckpt-0002000/
        <group>.safetensors  one file per array group, e.g. model, optim
        meta.json            caller's JSON meta + {"files": {name: {"bytes", "sha256"}}}
    OUT/.lock                held (flock) by the training run writing here; holds its PID

A save writes a fresh hidden directory (each file fsynced), renames it into place, then swaps
latest.json with os.replace, then best.json, and only then deletes older checkpoints (all but the
latest and the best). A crash or a failed write (a full disk) at any point leaves latest.json
naming a complete checkpoint, and removes what the failed save had written. Loads verify sizes and
checksums, so a truncated or corrupt file is reported in one line instead of being half-read.

An optimizer's state goes in as one more array group (its moment buffers, "<param index>.<name>")
and a JSON part (hyperparameters and step counts): optim_state and load_optim.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigrad.files import fsync_dir, write_atomic

FORMAT = "minigrad-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.json"
BEST = "best.json"
META = "meta.json"
LOCK = ".lock"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or does not fit; message is one line."""


class RunDirInUse(CheckpointError):
    """Another process holds the run directory's lock; the message names its PID."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    arrays: dict  # group name -> {tensor name -> np.ndarray}


def _safetensors():
    try:
        import safetensors.numpy as stnp
    except ImportError:
        raise CheckpointError("checkpoints need the 'safetensors' package: pip install safetensors") from None
    return stnp


def _write_file(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1).encode())


def has_checkpoint(out_dir) -> bool:
    return (Path(out_dir) / LATEST).is_file() or (Path(out_dir) / META).is_file()


def _pointer(path: Path) -> str | None:
    """The checkpoint name a pointer file (latest.json, best.json) holds, or None."""
    try:
        name = json.loads(path.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def latest_name(out_dir) -> str | None:
    """The name of the checkpoint latest.json names (e.g. "ckpt-0000250"), or None."""
    return _pointer(Path(out_dir) / LATEST)


def save_checkpoint(out_dir, step: int, arrays: dict, meta: dict, best: bool | None = None) -> Path:
    """Write arrays ({group: {name: ndarray}}) and JSON-able meta as checkpoint `step` of out_dir.

    Returns the new checkpoint directory. Older checkpoints of out_dir are removed after the
    new one is committed, except the best one: ``best=True`` makes this checkpoint the best
    (best.json names it), ``best=False`` keeps the one best.json names, ``best=None`` keeps
    none (and removes best.json). If the save fails (an exception, a full disk), what it wrote is
    removed and the previous checkpoint stays the latest.
    """
    stnp = _safetensors()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ckpt-tmp-"))
    final = None
    try:
        files = {}
        for group, tensors in arrays.items():
            payload = stnp.save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
            name = f"{group}.safetensors"
            _write_file(tmp / name, payload)
            files[name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        full = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, step=int(step), files=files)
        _write_file(tmp / META, json.dumps(full, indent=1).encode())
        fsync_dir(tmp)
        candidate = out_dir / f"ckpt-{int(step):07d}"
        n = 0
        while candidate.exists():  # the same step saved twice (e.g. Ctrl-C right after a save)
            n += 1
            candidate = out_dir / f"ckpt-{int(step):07d}-{n}"
        os.rename(tmp, candidate)
        final = candidate
        fsync_dir(out_dir)
        _write_json_atomic(out_dir / LATEST, {"checkpoint": final.name})   # the commit point
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if final is not None and latest_name(out_dir) != final.name:      # renamed, never committed
            shutil.rmtree(final, ignore_errors=True)
        raise
    keep = {final.name, _pointer(out_dir / BEST)}     # the old best stays until best.json moves on
    if best is True:
        _write_json_atomic(out_dir / BEST, {"checkpoint": final.name, "step": int(step)})
        keep = {final.name}
    elif best is None:
        (out_dir / BEST).unlink(missing_ok=True)
        keep = {final.name}
    for old in out_dir.iterdir():  # only after the commit point
        if old.name not in keep and old.is_dir() and (old.name.startswith("ckpt-") or old.name.startswith(".ckpt-tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path, which: str = "latest") -> Path:
    """A run directory (with latest.json) or a checkpoint directory (with meta.json) -> the latter.
    which="best": the run directory's best checkpoint (best.json) instead of its latest."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: no such directory")
    if (path / META).is_file():
        if which == "best":
            raise CheckpointError(f"{path} is a checkpoint directory; --best needs its run directory")
        return path
    pointer = path / (BEST if which == "best" else LATEST)
    if not pointer.is_file():
        if which == "best":
            raise CheckpointError(f"no best checkpoint at {path}: {BEST} is not there (trained with --no-keep-best, "
                                  "or before its first evaluation)")
        raise CheckpointError(f"no checkpoint at {path}: neither {LATEST} nor {META} is there")
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint pointer {pointer} is corrupt") from None
    target = path / name
    if not (target / META).is_file():
        raise CheckpointError(f"checkpoint {target} named by {pointer} is missing or incomplete")
    return target


def load_checkpoint(path, groups=None, which: str = "latest") -> Checkpoint:
    """Load and verify a checkpoint; `groups` limits which array groups are read (default all);
    which="best" takes a run directory's best checkpoint instead of its latest."""
    stnp = _safetensors()
    ckpt = resolve(path, which)
    try:
        meta = json.loads((ckpt / META).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: {META} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"checkpoint {ckpt}: {META} is not a minigrad checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt}: format version {meta.get('format_version')} is not supported "
                              f"(this minigrad reads version {FORMAT_VERSION})")
    arrays = {}
    for name, info in meta["files"].items():
        group = name.removesuffix(".safetensors")
        if groups is not None and group not in groups:
            continue
        file = ckpt / name
        try:
            payload = file.read_bytes()
        except OSError:
            raise CheckpointError(f"checkpoint {ckpt}: {name} is missing") from None
        if len(payload) != info.get("bytes"):
            raise CheckpointError(f"checkpoint {ckpt}: {name} is truncated or altered "
                                  f"({len(payload)} bytes, expected {info.get('bytes')})")
        if hashlib.sha256(payload).hexdigest() != info.get("sha256"):
            raise CheckpointError(f"checkpoint {ckpt}: {name} is corrupt (checksum mismatch)")
        try:
            arrays[group] = _load_group(stnp, payload)
        except Exception as e:  # safetensors raises its own error type
            raise CheckpointError(f"checkpoint {ckpt}: {name} is not valid safetensors ({e})") from None
    missing = set(groups or ()) - set(arrays)
    if missing:
        raise CheckpointError(f"checkpoint {ckpt}: has no {', '.join(sorted(missing))} arrays")
    return Checkpoint(ckpt, meta, arrays)


def _load_group(stnp, payload: bytes) -> dict:
    """safetensors.numpy.load, plus BF16 arrays as ml_dtypes.bfloat16 (safetensors.numpy writes them
    but cannot read them back); F16 and the rest are safetensors.numpy's own."""
    if b'"BF16"' not in payload[:8 + int.from_bytes(payload[:8], "little")]:
        return dict(stnp.load(payload))
    from safetensors import deserialize

    from minigrad.backend import bfloat16
    return {name: np.frombuffer(bytearray(t["data"]), dtype=bfloat16() if t["dtype"] == "BF16"
                                else stnp._getdtype(t["dtype"])).reshape(t["shape"])
            for name, t in deserialize(payload)}


def check_arrays(expected: dict, got: dict, what: str, where) -> None:
    """Names and shapes of `got` must equal `expected` ({name: shape}); one-line error otherwise."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise CheckpointError(f"checkpoint {where}: {what} does not match ({'; '.join(parts)})")
    for k, shape in expected.items():
        if tuple(got[k].shape) != tuple(shape):
            raise CheckpointError(f"checkpoint {where}: {what} {k} has shape {tuple(got[k].shape)}, "
                                  f"expected {tuple(shape)}")


def check_param_count(ckpt: Checkpoint, n_params: int, group: str = "model") -> None:
    """The model config in a checkpoint's meta.json must describe the weights it stores: checked
    before a model is built from it, so a hand-edited block_size of 10**12 is one line, not an
    allocation failure. The group's arrays must be loaded."""
    stored = sum(int(a.size) for a in ckpt.arrays[group].values())
    if stored != n_params:
        raise CheckpointError(f"checkpoint {ckpt.path}: the model_config in {META} describes {n_params:,} "
                              f"parameters, but {group}.safetensors holds {stored:,}; {META} was edited or "
                              "belongs to other weights")


# --------------------------------------------------------------------------- the run directory's lock
@contextlib.contextmanager
def lock_run_dir(out_dir, wait_for_pid: float = 1.0):
    """Hold an exclusive advisory lock (flock) on OUT/.lock while a training run writes to OUT.

    The lock dies with its process, however it ends. A second run fails at once with RunDirInUse
    naming the holder's PID (the holder writes it into the file once it has the lock, and empties
    the file when it lets go), having written nothing. A run that created OUT and wrote nothing
    into it removes it again (a locker that finds its lock file unlinked locks afresh). Where the
    file system has no flock, the run goes on unlocked.
    """
    try:
        import fcntl
    except ImportError:      # no flock on this platform
        yield
        return
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    while True:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd, wait_for_pid)
            os.close(fd)
            raise RunDirInUse(f"{out_dir} is in use by another training run ({holder}); "
                              "wait for it to end, or choose another --out-dir") from None
        except OSError:      # e.g. ENOLCK: a network file system without flock: run unlocked
            os.close(fd)
            yield
            return
        if os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)         # its last holder removed the file just before letting go: lock afresh
    try:
        with contextlib.suppress(OSError):     # a full disk: locked all the same, PID unknown
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            # a run that created the folder and wrote nothing leaves nothing behind
            if created and [p.name for p in out_dir.iterdir()] == [LOCK]:
                (out_dir / LOCK).unlink()
                out_dir.rmdir()
        os.close(fd)


def _holder(fd: int, wait: float) -> str:
    """'PID n' of the lock's holder, read from the lock file (it writes it just after locking)."""
    deadline = time.monotonic() + wait
    while True:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return f"PID {text}"
        if time.monotonic() > deadline:
            return "PID unknown"
        time.sleep(0.02)


# --------------------------------------------------------------------------- optimizer state
def optim_state(opt) -> tuple[dict, dict]:
    """Optimizer state split for a checkpoint: ({"<param index>.<buffer>": array}, JSON-able rest)."""
    sd = opt.state_dict()
    arrays, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if hasattr(v, "shape"):
                arrays[f"{i}.{k}"] = np.asarray(v)
            else:
                scalars.setdefault(str(i), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["groups"]]
    return arrays, {"groups": groups, "scalars": scalars}


def load_optim(opt, arrays: dict, info: dict, where) -> None:
    """Inverse of optim_state; a state that does not fit this optimizer is a CheckpointError."""
    state: dict = {}
    try:
        for key, v in arrays.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        for i, st in info["scalars"].items():
            state.setdefault(int(i), {}).update(st)
        opt.load_state_dict({"groups": info["groups"], "state": state})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {where}: optimizer state does not fit this model ({e})") from None
