"""Checkpoint I/O, the lr schedule, the training loop (resume, eval isolation, Ctrl-C), `minigrad train`."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import checkpoint as C
from models.train import TrainConfig, lr_at, read_log

pytest.importorskip("safetensors", reason="checkpoints need the optional 'safetensors' package")

REPO = Path(__file__).resolve().parents[1]


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"model": {"w": rng.standard_normal((3, 4), dtype=np.float32), "b": np.zeros(4, np.float32)},
            "optim": {"m.w": rng.standard_normal((3, 4), dtype=np.float32)}}


# --------------------------------------------------------------------------- checkpoint files

def test_checkpoint_round_trip_and_layout(tmp_path):
    arrays = _arrays()
    path = C.save_checkpoint(tmp_path, 7, arrays, {"model_config": {"n": 1}, "rng": {"state": 2 ** 100}})
    assert path == tmp_path / "ckpt-0000007"
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "ckpt-0000007"}
    for where in (tmp_path, path):  # a run directory or the checkpoint directory itself
        ck = C.load_checkpoint(where)
        assert ck.meta["step"] == 7 and ck.meta["rng"]["state"] == 2 ** 100
        for g in arrays:
            for k, v in arrays[g].items():
                assert ck.arrays[g][k].dtype == v.dtype and np.array_equal(ck.arrays[g][k], v)
    assert set(C.load_checkpoint(tmp_path, groups=["model"]).arrays) == {"model"}


def test_new_checkpoint_replaces_old_only_after_commit(tmp_path):
    C.save_checkpoint(tmp_path, 1, _arrays(1), {})
    C.save_checkpoint(tmp_path, 2, _arrays(2), {})
    C.save_checkpoint(tmp_path, 2, _arrays(3), {})  # same step twice: a new name, never in place
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-0000002-1", "latest.json"]
    assert np.array_equal(C.load_checkpoint(tmp_path).arrays["model"]["w"], _arrays(3)["model"]["w"])


def test_crash_mid_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    C.save_checkpoint(tmp_path, 1, _arrays(1), {})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt-0000001").iterdir()}
    real = C._write_file
    calls = []

    def crash_on_second_file(path, payload):
        calls.append(path)
        if len(calls) == 2:
            real(path, payload[: len(payload) // 2])
            raise OSError("disk full")
        real(path, payload)

    monkeypatch.setattr(C, "_write_file", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(tmp_path, 2, _arrays(2), {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001", "latest.json"]  # temp dir cleaned
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt-0000001").iterdir()} == before
    assert C.load_checkpoint(tmp_path).meta["step"] == 1


def test_crash_before_the_pointer_swap_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    C.save_checkpoint(tmp_path, 1, _arrays(1), {})

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path, 2, _arrays(2), {})
    monkeypatch.undo()
    ck = C.load_checkpoint(tmp_path)
    assert ck.meta["step"] == 1 and np.array_equal(ck.arrays["model"]["w"], _arrays(1)["model"]["w"])


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-9]), "truncated"),
    (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-4] + b"\x00\x00\x80\x7f"), "checksum"),
    (lambda d: (d / "optim.safetensors").unlink(), "missing"),
    (lambda d: (d / "meta.json").write_text((d / "meta.json").read_text()[:50]), "meta.json is corrupt"),
    (lambda d: (d / "meta.json").write_text("{}"), "not a minigrad checkpoint"),
])
def test_damaged_checkpoints_give_one_line_errors(tmp_path, damage, expected):
    path = C.save_checkpoint(tmp_path, 3, _arrays(), {})
    damage(path)
    with pytest.raises(C.CheckpointError) as err:
        C.load_checkpoint(tmp_path)
    assert expected in _one_line(err)


def test_missing_or_bad_pointer(tmp_path):
    with pytest.raises(C.CheckpointError, match="no such directory"):
        C.load_checkpoint(tmp_path / "nope")
    with pytest.raises(C.CheckpointError, match="neither"):
        C.load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text('{"checkpoint": "ckpt-0000009"}')
    with pytest.raises(C.CheckpointError, match="missing or incomplete"):
        C.load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text('{"checkpoint": "../etc"}')  # never leaves the run directory
    with pytest.raises(C.CheckpointError, match="corrupt"):
        C.load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text("{")
    with pytest.raises(C.CheckpointError, match="corrupt"):
        C.load_checkpoint(tmp_path)


def test_check_arrays_names_the_mismatch():
    got = {"a": np.zeros((2, 3)), "c": np.zeros(1)}
    with pytest.raises(C.CheckpointError, match="missing b; unexpected c"):
        C.check_arrays({"a": (2, 3), "b": (1,)}, got, "weights", "X")
    with pytest.raises(C.CheckpointError, match=r"a has shape \(2, 3\), expected \(3, 2\)"):
        C.check_arrays({"a": (3, 2), "c": (1,)}, got, "weights", "X")


# --------------------------------------------------------------------------- schedule

def test_lr_schedule_warmup_cosine_floor():
    cfg = TrainConfig(max_iters=100, warmup_iters=10, lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(i, cfg) for i in range(120)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # warmup rises
    assert lrs[0] < 2e-4 and lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))  # cosine falls
    assert lrs[55] == pytest.approx(0.5 * (1e-3 + 1e-4))  # half way down
    assert lrs[100] == lrs[119] == 1e-4  # floor
