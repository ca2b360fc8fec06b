"""`minigrad train --dtype` (issue 15): bfloat16 and float16 training through the real CLI, the
float16 loss scaler in the Trainer (an injected inf skips the step on every worker and rank, the
scaler's state survives a resume bit for bit), and what a bad or changed --dtype gets.

Tolerances: a bfloat16 run moves each GEMM operand by at most u = eps/2 relative, so over a few
steps a loss near ln(vocab) drifts from float32's by a small multiple of eps; we allow
8 eps (1 + loss) per step, as tests/test_amp.py does for 200 steps (eps of the half type:
2^-7 bfloat16, 2^-10 float16). Equal losses would mean autocast did nothing: asserted too.
"""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from minigrad.amp import GradScaler
from minigrad.autograd import Function
from minigrad.models.checkpoint import load_checkpoint
from minigrad.models.progress import read_log
from minigrad.models.train_config import TrainConfig, TrainError

from test_train import TINY, _train

EPS = {"bfloat16": 2.0 ** -7, "float16": 2.0 ** -10}


def _arrays(out_dir):
    ck = load_checkpoint(out_dir)
    return ck, {f"{g}/{k}": v for g, arrays in ck.arrays.items() for k, v in arrays.items()}


# --------------------------------------------------------------------------- the CLI

@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_train_dtype_runs_under_autocast_and_tracks_float32(tmp_path, corpus, capsys, dtype):
    common = ["--data", corpus, "--max-iters", 6, "--eval-interval", 3, *TINY]
    code, out, err = _train(capsys, *common, "--out-dir", tmp_path / "f32")
    assert code == 0, err
    code, out, err = _train(capsys, *common, "--out-dir", tmp_path / dtype, "--dtype", dtype)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("val_loss=")
    f32, half = read_log(tmp_path / "f32" / "log.jsonl"), read_log(tmp_path / dtype / "log.jsonl")
    a, b = np.array([r["loss"] for r in f32]), np.array([r["loss"] for r in half])
    assert len(a) == len(b) == 6 and not np.array_equal(a, b)            # autocast rounded something
    assert np.all(np.abs(a - b) <= 8 * EPS[dtype] * (1 + a)), (a, b)
    ck, arrays = _arrays(tmp_path / dtype)
    assert ck.meta["train_config"]["dtype"] == dtype
    assert all(v.dtype == np.float32 for k, v in arrays.items() if k.startswith("model/"))   # master weights
    if dtype == "float16":     # the scaler's state and the skip count are checkpointed; every record has its scale
        assert ck.meta["grad_scaler"]["scale"] == 2.0 ** 16 and ck.meta["skipped_steps"] == 0
        assert all(r["loss_scale"] == 2.0 ** 16 for r in half)
    else:
        assert "grad_scaler" not in ck.meta and all("loss_scale" not in r for r in half)
    assert "grad_scaler" not in _arrays(tmp_path / "f32")[0].meta
    assert all(set(r) <= {"step", "loss", "lr", "train_loss", "val_loss"} for r in f32)   # float32's log as before


def test_seq2seq_trains_with_dtype(tmp_path, capsys):
    code, out, err = _train(capsys, "--model", "seq2seq", "--task", "reverse", "--out-dir", tmp_path / "s2s",
                            "--dtype", "bfloat16", "--max-iters", 3, "--eval-interval", 3, "--n-layer", 1,
                            "--n-embd", 16, "--batch-size", 8, "--eval-iters", 1, "--final-eval-iters", 1, "--quiet")
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("exact_match=")
    assert load_checkpoint(tmp_path / "s2s").meta["train_config"]["dtype"] == "bfloat16"


def test_bad_dtype_is_one_line(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as e:
        _train(capsys, "--data", corpus, "--out-dir", tmp_path / "x", "--dtype", "fp8", *TINY)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--dtype" in err and "'fp8'" in err and "float16" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(TrainError, match=r"^--dtype must be one of float32, bfloat16, float16, got 'half'$"):
        TrainConfig(dtype="half").check()


def _steep_scaler(monkeypatch):
    """The CLI's float16 scaler made to overflow at once and to grow again after 2 clean steps, so a
    short run both skips steps and changes its scale (PyTorch's defaults would do neither)."""
    from minigrad.models import trainer
    monkeypatch.setattr(trainer, "GradScaler", functools.partial(GradScaler, init_scale=2.0 ** 40, growth_interval=2))


def test_float16_resume_restores_the_scaler_and_logs_the_uninterrupted_run(tmp_path, corpus, capsys, monkeypatch):
    _steep_scaler(monkeypatch)
    common = ["--data", corpus, "--eval-interval", 5, "--lr-decay-iters", 40, "--dtype", "float16", *TINY,
              "--final-eval-iters", 2]    # the final evaluation as the others: step 20 is one of each run
    assert _train(capsys, *common, "--max-iters", 40, "--out-dir", tmp_path / "whole")[0] == 0
    assert _train(capsys, *common, "--max-iters", 20, "--out-dir", tmp_path / "split")[0] == 0
    code, _, err = _train(capsys, "--max-iters", 40, "--out-dir", tmp_path / "split", "--resume", "--quiet")
    assert code == 0, err
    whole = read_log(tmp_path / "whole" / "log.jsonl")
    assert read_log(tmp_path / "split" / "log.jsonl") == whole
    skipped = [r["step"] for r in whole if r.get("skipped")]
    scales = [r["loss_scale"] for r in whole]
    assert skipped and len(skipped) < 40 and any(s > 20 for s in skipped)   # skips on both sides of the resume
    assert len(set(scales)) > 2 and min(scales) < 2.0 ** 40                  # lowered, and grown again
    (ck_a, a), (ck_b, b) = _arrays(tmp_path / "whole"), _arrays(tmp_path / "split")
    assert ck_a.meta["grad_scaler"] == ck_b.meta["grad_scaler"] and ck_b.meta["skipped_steps"] == len(skipped)
    assert ck_b.meta["train_config"]["dtype"] == "float16"                   # --resume kept the saved dtype
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_given_dtype_overrides_the_checkpoints_on_resume_and_says_so(tmp_path, corpus, capsys):
    common = ["--data", corpus, "--eval-interval", 2, *TINY]
    assert _train(capsys, *common, "--max-iters", 2, "--out-dir", tmp_path / "r", "--dtype", "bfloat16")[0] == 0
    code, _, err = _train(capsys, "--max-iters", 4, "--out-dir", tmp_path / "r", "--resume", "--dtype", "float16")
    assert code == 0, err
    assert "resuming a bfloat16 run in float16: --dtype overrides the checkpoint's" in err
    ck = load_checkpoint(tmp_path / "r")
    assert ck.meta["train_config"]["dtype"] == "float16" and ck.meta["grad_scaler"]["scale"] == 2.0 ** 16


# --------------------------------------------------------------------------- the Trainer: an injected inf

class InfGrad(Function):
    """The identity whose gradient is +inf: an overflow planted in one backward."""

    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return (g * float("inf"),)


POISON_STEP = 3        # the 1-based step whose batch carries the planted inf


def _inf_job(steps):
    """A linear regression whose rows carry a flag; a slice holding a flagged row plants an inf in
    its backward. The batches of step POISON_STEP flag their last row only (the last slice: a
    forked worker's, with two workers)."""
    from minigrad import nn

    model = nn.Linear(3, 1)
    calls = {"train": 0}

    def batches(split, rng):
        x = rng.standard_normal((6, 3)).astype(np.float32)
        y = x.sum(1, keepdims=True).astype(np.float32)
        flag = np.zeros((6, 1), np.float32)
        if split == "train" and steps is not None:
            calls["train"] += 1
            if calls["train"] == POISON_STEP:
                flag[-1] = 1
        return x, y, flag

    def loss_fn(model, batch):
        x, y, flag = batch
        loss = ((model(mg.Tensor(x)) - mg.Tensor(y)) ** 2).mean()
        return InfGrad.apply(loss) if flag.any() else loss

    return model, batches, loss_fn


@pytest.mark.parametrize("workers", [1, 2])
def test_an_inf_gradient_skips_the_step_on_every_worker(tmp_path, workers):
    from minigrad.models.data_parallel import split_rows
    from minigrad.models.trainer import Trainer

    model, batches, loss_fn = _inf_job(steps=True)
    cfg = TrainConfig(max_iters=5, eval_interval=100, eval_iters=1, final_eval_iters=1, workers=workers,
                      dtype="float16", warmup_iters=0)
    weights = []
    init = 2.0 ** 10       # low enough that no gradient of this job overflows float16 but the planted one
    t = Trainer(model, batches, loss_fn, cfg, tmp_path / "run", quiet=True, split=split_rows,
                scaler=GradScaler(init_scale=init),
                on_step=lambda tr: weights.append([p.data.copy() for p in tr.model.parameters()]))
    assert (t.parallel is not None) == (workers == 2)
    result = t.run()
    assert result["skipped_steps"] == t.skipped_steps == 1
    for before, after in zip(weights[POISON_STEP - 2], weights[POISON_STEP - 1]):   # the skipped step left them
        np.testing.assert_array_equal(before, after)
    for before, after in zip(weights[POISON_STEP - 1], weights[POISON_STEP]):       # the next one moved them
        assert not np.array_equal(before, after)
    assert t.opt.state_dict()["state"][0]["step"] == 4                               # AdamW took 4 of 5 steps
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log if r.get("skipped")] == [POISON_STEP]
    scales = [r["loss_scale"] for r in log]
    assert scales[:POISON_STEP] == [init] * POISON_STEP and scales[POISON_STEP:] == [init / 2] * (5 - POISON_STEP)
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    assert load_checkpoint(tmp_path / "run").meta["grad_scaler"]["scale"] == init / 2


@pytest.mark.filterwarnings("ignore:.*encountered:RuntimeWarning")   # inf * 0 in the clipping: the point
def test_an_inf_gradient_in_float32_or_bfloat16_is_not_caught_by_a_scaler(tmp_path):
    """Only float16 scales and skips; in float32 and bfloat16 an inf gradient reaches the weights
    (as in PyTorch without a GradScaler) and the next loss says so in one line."""
    from minigrad.models.trainer import Trainer

    for dtype in ("float32", "bfloat16"):
        model, batches, loss_fn = _inf_job(steps=True)
        cfg = TrainConfig(max_iters=5, eval_interval=100, eval_iters=1, final_eval_iters=1, workers=1, dtype=dtype)
        t = Trainer(model, batches, loss_fn, cfg, tmp_path / dtype, quiet=True)
        assert not t.scaler.is_enabled()
        with pytest.raises(TrainError, match="loss became nan"):
            t.run()


# --------------------------------------------------------------------------- several MPI ranks

def _mpiexec():
    from minigrad.models.mpi_launch import find_mpiexec
    return find_mpiexec()


RANK_SCRIPT = r'''
import sys
import numpy as np
from minigrad import distributed
from minigrad.autograd import Function
from minigrad.models import cli, trainer


class InfGrad(Function):
    def forward(self, x):
        return x.copy()

    def backward(self, g):
        return (g * float("inf"),)


rank = distributed.launched()[1]
made = []
real_init = trainer.Trainer.__init__


def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    made.append(self)
    inner = self.loss_fn

    def loss_fn(model, batch):          # rank 1's shard of step 3 plants an inf
        loss = inner(model, batch)
        return InfGrad.apply(loss) if rank == 1 and self.step == 2 else loss
    self.loss_fn = loss_fn


trainer.Trainer.__init__ = init
code = cli.main(["train", *sys.argv[2:]])
t = made[0]
digest = [float(np.abs(p.data.astype(np.float64)).sum()) for p in t.model.parameters()]
with open(f"{sys.argv[1]}.{rank}", "w") as f:      # (a rank > 0 prints nothing)
    f.write(f"RANK {rank} code {code} skipped {t.skipped_steps} scale {t.scaler.get_scale()} weights {digest!r}")
'''


@pytest.mark.skipif(_mpiexec() is None or importlib.util.find_spec("mpi4py") is None
                    or not sys.platform.startswith("linux"),
                    reason="needs mpiexec and mpi4py on Linux: pip install 'minigrad[mpi]' (mpi4py and the mpich wheel)")
def test_an_inf_on_one_rank_skips_the_step_on_every_rank(tmp_path, corpus):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    cmd = [_mpiexec(), "-n", "2", sys.executable, str(script), str(tmp_path / "report"), "--data", str(corpus), "--out-dir",
           str(tmp_path / "run"), "--max-iters", "5", "--eval-interval", "5", "--dtype", "float16", "--workers", "1",
           *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, MINIGRAD_DATA_DIR=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [(tmp_path / f"report.{r}").read_text() for r in (0, 1)]
    assert lines[0].startswith("RANK 0 code 0 skipped 1 scale 32768.0 ")
    assert lines[1].startswith("RANK 1 code 0 skipped 1 scale 32768.0 ")
    assert lines[0].split(" weights ")[1] == lines[1].split(" weights ")[1]    # the ranks' weights stayed equal
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log if r.get("skipped")] == [3]
    assert json.loads(json.dumps(load_checkpoint(tmp_path / "run").meta["grad_scaler"]))["scale"] == 2.0 ** 15
