"""Checkpoint I/O: safetensors for arrays, JSON for everything else, crash-safe writes.

Layout of a run directory:
    OUT/latest.json          {"checkpoint": "ckpt-0002000"}  (replaced atomically; the commit point)
    OUT/ckpt-0002000/
        <group>.safetensors  one file per array group, e.g. model, optim
        meta.json            caller's JSON meta + {"files": {name: {"bytes", "sha256"}}}

A save writes a fresh hidden directory (each file fsynced), renames it into place, then swaps
latest.json with os.replace, and only then deletes older checkpoints. A crash at any point leaves
latest.json naming a complete checkpoint. Loads verify sizes and checksums, so a truncated or
corrupt file is reported in one line instead of being half-read.

An optimizer's state goes in as one more array group (its moment buffers, "<param index>.<name>")
and a JSON part (hyperparameters and step counts): optim_state and load_optim.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "minigrad-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.json"
META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or does not fit; message is one line."""


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, payload: bytes) -> None:
    """Write a file so a crash leaves either the old file or the whole new one: a temp file in the
    same folder, fsynced, renamed over the target, then the folder fsynced."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1).encode())


def has_checkpoint(out_dir) -> bool:
    return (Path(out_dir) / LATEST).is_file() or (Path(out_dir) / META).is_file()


def save_checkpoint(out_dir, step: int, arrays: dict, meta: dict) -> Path:
    """Write arrays ({group: {name: ndarray}}) and JSON-able meta as checkpoint `step` of out_dir.

    Returns the new checkpoint directory. Older checkpoints of out_dir are removed after the
    new one is committed.
    """
    stnp = _safetensors()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ckpt-tmp-"))
    try:
        files = {}
        for group, tensors in arrays.items():
            payload = stnp.save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
            name = f"{group}.safetensors"
            _write_file(tmp / name, payload)
            files[name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
        full = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, step=int(step), files=files)
        _write_file(tmp / META, json.dumps(full, indent=1).encode())
        _fsync_dir(tmp)
        final = out_dir / f"ckpt-{int(step):07d}"
        n = 0
        while final.exists():  # the same step saved twice (e.g. Ctrl-C right after a save)
            n += 1
            final = out_dir / f"ckpt-{int(step):07d}-{n}"
        os.rename(tmp, final)
        _fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_json_atomic(out_dir / LATEST, {"checkpoint": final.name})
    for old in out_dir.iterdir():  # only after the commit point
        if old != final and old.is_dir() and (old.name.startswith("ckpt-") or old.name.startswith(".ckpt-tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def resolve(path) -> Path:
    """A run directory (with latest.json) or a checkpoint directory (with meta.json) -> the latter."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: no such directory")
    if (path / META).is_file():
        return path
    latest = path / LATEST
    if not latest.is_file():
        raise CheckpointError(f"no checkpoint at {path}: neither {LATEST} nor {META} is there")
    try:
        name = json.loads(latest.read_text())["checkpoint"]
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint pointer {latest} is corrupt") from None
    target = path / name
    if not (target / META).is_file():
        raise CheckpointError(f"checkpoint {target} named by {latest} is missing or incomplete")
    return target


def load_checkpoint(path, groups=None) -> Checkpoint:
    """Load and verify a checkpoint; `groups` limits which array groups are read (default all)."""
    stnp = _safetensors()
    ckpt = resolve(path)
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
