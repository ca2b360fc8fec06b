"""minigrad.distributed and `mpiexec -n N minigrad train` (models/launch.py, the Trainer's rank hooks).

The MPI tests launch real ranks with the mpiexec of the `mpi` extra (MPICH) and skip, saying why,
where it or mpi4py is missing. What they hold the code to:
  - 2 ranks x --batch-size B end where one process with --batch-size 2B and 2 data-parallel workers
    ends, bit for bit: every logged loss and evaluation, every weight and AdamW moment (GPT and
    seq2seq). Why exact: each rank computes exactly one of the single process's two slices (the
    same rows, the same loss weight up to a factor 2, which scales exactly), and a sum of two
    addends does not depend on its order, nor does halving it;
  - a run resumed on 2 ranks logs what the uninterrupted one logged (dropout on); a 2-rank
    checkpoint resumed in one process keeps the global batch and logs the same too;
  - rank 0 alone writes (files and output), with each rank in its own working directory;
  - a failing, hanging or killed rank ends the job in bounded time with a one-line error.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS
from minigrad.models.progress import read_log
from minigrad.models.mpi_launch import find_mpiexec

from minigrad import distributed

HERE = Path(__file__).resolve().parent
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--warmup-iters", "2",
        "--eval-iters", "4", "--final-eval-iters", "5", "--lr", "3e-3", "--quiet"]
S2S = ["--model", "seq2seq", "--task", "sort", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
       "--warmup-iters", "2", "--eval-iters", "2", "--final-eval-iters", "2", "--quiet"]


# ============================================================================ without MPI

def test_the_single_communicator_is_rank_0_of_1_and_changes_nothing():
    comm = distributed.current()
    assert (comm.backend, comm.rank, comm.size, comm.local_rank) == ("single", 0, 1, 0)
    buf = np.arange(5, dtype=np.float32)
    assert comm.allreduce_mean_(buf) is buf and np.array_equal(buf, np.arange(5, dtype=np.float32))
    with pytest.raises(ValueError, match="one flat contiguous array"):
        comm.allreduce_mean_(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="one flat contiguous array"):
        comm.allreduce_mean_(np.zeros(6, np.float32)[::2])
    comm.agree()                                    # nobody failed
    with pytest.raises(distributed.DistributedError, match="disk full"):
        comm.agree("disk full")


def test_backend_choice_and_launcher_detection(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.launched() is None and distributed.choose_backend(None) == "single"
    monkeypatch.setenv("PMI_SIZE", "1")
    assert distributed.choose_backend(None) == "single"        # mpiexec -n 1: nothing to reduce
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert distributed.launched() == (2, 1, 1)
    assert distributed.choose_backend(None, "cpu") == "mpi" and distributed.choose_backend(None, "cuda") == "nccl"
    assert distributed.choose_backend("none") == "single"       # --dist none overrides the detection
    with pytest.raises(distributed.DistributedError, match="needs --device cuda"):
        distributed.choose_backend("nccl", "cpu")
    with pytest.raises(distributed.DistributedError, match="use --dist nccl"):
        distributed.choose_backend("mpi", "cuda")


def test_missing_mpi4py_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys):
    from minigrad.models import cli

    monkeypatch.setitem(sys.modules, "mpi4py", None)            # `import mpi4py` raises ImportError
    with pytest.raises(distributed.DistributedError, match=r"pip install 'minigrad\[mpi\]'"):
        distributed.import_mpi()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    code = cli.main(["train", "--dist", "mpi", "--data", str(corpus), "--out-dir", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("minigrad train: error: ") and "pip install 'minigrad[mpi]'" in err[0]
    assert not (tmp_path / "run").exists()
    assert distributed.current().backend == "single"


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="mpi4py is not installed (the mpi extra)")
def test_mpi4py_built_against_no_mpi_is_one_line_saying_what_to_install(monkeypatch):
    class NoLibrary:                     # what mpi4py raises when it finds no MPI library to load
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "mpi4py.MPI":
                raise RuntimeError("cannot load MPI library\nlibmpi.so.12: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoLibrary, *sys.meta_path])
    with pytest.raises(distributed.DistributedError) as e:
        distributed.import_mpi()
    assert str(e.value) == ("mpi4py is installed but cannot load an MPI library (cannot load MPI library): "
                            + distributed.MPI_INSTALL)


def test_gradient_buffer_is_one_flat_aligned_buffer_and_keeps_missing_grads_missing():
    from minigrad.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=0)
    idx = np.random.default_rng(0).integers(0, 11, (3, 9))
    model(idx[:, :-1], idx[:, 1:])[1].backward()
    params = model.parameters()
    params[-1].grad = None                                      # a parameter no micro-batch reached
    before = [None if p.grad is None else p.grad.numpy().copy() for p in params]
    buf = distributed.GradientBuffer(params)
    assert len(buf.groups) == 1                                 # one dtype: one buffer, one allreduce
    flat = buf.groups[0][0]
    loss, stop = buf.reduce_(distributed.current(), 2.5, stop=15)
    assert (loss, stop) == (2.5, 15)
    for p, b in zip(params, before):
        if b is None:
            assert p.grad is None
            continue
        assert np.shares_memory(p.grad.data, flat) and p.grad.data.ctypes.data % 64 == 0
        np.testing.assert_array_equal(p.grad.numpy(), b)


# ---------------------------------------------------------------------------- the fused optimizer kernels

def test_fused_optimizer_kernels_compile_with_nvrtc():
    from minigrad.kernels import check
    from minigrad.kernels.runtime import CUPY_ADDED_OPTIONS

    from minigrad import fused_optim

    try:
        check.load_nvrtc()
    except check.NvrtcUnavailable as e:
        pytest.skip(f"NVRTC is not installed here ({e})")
    ok, log, lowered, _ = check.nvrtc_compile(fused_optim.SOURCE, "fused_optim.cu", fused_optim.NAMES,
                                              [*fused_optim.OPTIONS, *CUPY_ADDED_OPTIONS, "--gpu-architecture=sm_90"])
    assert ok, log
    assert set(lowered) == set(fused_optim.NAMES)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["adamw", "adam_l2", "adam", "sgd", "sgd_momentum_nesterov", "sgd_dampening"])
def test_fused_optimizer_kernels_equal_the_numpy_update_bit_for_bit_under_the_emulator(tmp_path, monkeypatch,
                                                                                        dtype, case):
    """The kernels a GPU runs, run by the CPU emulator (-ffp-contract=off, as --fmad=false on the
    GPU), against optim.py's NumPy path (the native Adam loop off): three steps, every bit."""
    from minigrad.kernels.emulate.build import BuildError
    from minigrad.kernels.runtime import Program

    from minigrad import Tensor, fused_optim, optim
    from minigrad.nn import Parameter

    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    cu = tmp_path / "fused_optim.cu"
    cu.write_text(fused_optim.SOURCE)
    program = Program(str(cu), fused_optim.NAMES)
    rng = np.random.default_rng(7)
    n = 1000                                  # several blocks and a partial one
    w0 = rng.standard_normal(n).astype(dtype)
    p = Parameter(w0.copy())
    w = w0.copy()
    if case.startswith("adam"):
        wd = 0.0 if case == "adam" else 0.1
        opt = (optim.AdamW if case == "adamw" else optim.Adam)([p], lr=0.01, betas=(0.9, 0.99), weight_decay=wd)
        m, v = np.zeros_like(w), np.zeros_like(w)
    else:
        kw = {"sgd": {}, "sgd_momentum_nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
              "sgd_dampening": dict(momentum=0.8, dampening=0.3, weight_decay=0.1)}[case]
        opt = optim.SGD([p], lr=0.1, **kw)
        buf = np.zeros_like(w) if kw.get("momentum") else None
    group = opt.param_groups[0]
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        p.grad = Tensor(g.copy())
        opt.step()
        if case.startswith("adam"):
            launch = fused_optim.adam_launch(w, g, m, v, lr=group["lr"], beta1=group["betas"][0],
                                             beta2=group["betas"][1], eps=group["eps"],
                                             weight_decay=group["weight_decay"], decoupled=opt.decoupled, step=t)
        else:
            launch = fused_optim.sgd_launch(w, g, buf, lr=group["lr"], weight_decay=group["weight_decay"],
                                            momentum=group["momentum"], dampening=group["dampening"],
                                            nesterov=group["nesterov"], first=t == 1)
        try:
            program.launch(*launch)
        except BuildError as e:
            pytest.skip(f"the CPU emulator cannot be built here: {str(e).splitlines()[0]}")
        np.testing.assert_array_equal(w, p.numpy(), err_msg=f"{case} {np.dtype(dtype)} step {t}")
    if case.startswith("adam"):
        np.testing.assert_array_equal(m, opt.state[id(p)]["exp_avg"])
        np.testing.assert_array_equal(v, opt.state[id(p)]["exp_avg_sq"])


def test_a_training_step_on_cuda_reads_the_device_once_outside_the_ops(tmp_path):
    """On the strict stand-in for a GPU (MINIGRAD_STRICT=cuda: arrays whose reads back to the host
    are counted here), the training loop, the clip and the optimizer read the device once per step
    (the loss, at its end), and the micro-batch runs whole although --workers is 2; DataParallel's
    clip of device gradients reads nothing. Reads made inside the model's forward and backward
    (minigrad/ops, nn, autograd) are counted apart. In a child process: the stand-in is chosen
    when minigrad is first imported."""
    script = r"""
import json, traceback, numpy as np
from minigrad import strict
from minigrad.models.gpt import GPT, GPTConfig
from minigrad.models.train_config import TrainConfig
from minigrad.models.trainer import Trainer
from minigrad.models.data_parallel import split_rows
reads = []
MODEL = ("/minigrad/ops/", "/minigrad/nn/", "/minigrad/autograd.py")   # the model's forward and backward
def in_model():
    return any(m in f.filename.replace("\\", "/") for f in traceback.extract_stack() for m in MODEL)
for name in ("__float__", "__int__", "__index__", "__bool__", "get", "unwrap"):
    real = getattr(strict.StrictArray, name)
    def counted(self, *a, _real=real, _name=name, **k):
        in_ops = in_model()
        reads.append(("ops:" if in_ops else "") + _name)
        return _real(self, *a, **k)
    setattr(strict.StrictArray, name, counted)
real_getattr = strict.StrictArray.__getattr__
def getattr_counted(self, name):
    if name in ("item", "tolist"):
        in_ops = in_model()
        reads.append(("ops:" if in_ops else "") + name)
    return real_getattr(self, name)
strict.StrictArray.__getattr__ = getattr_counted
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=0).to("cuda")
tokens = np.random.default_rng(0).integers(0, 11, 500)
def batches(split, rng):
    ix = rng.integers(0, len(tokens) - 9, 4)
    chunk = tokens[ix[:, None] + np.arange(9)]
    return chunk[:, :-1], chunk[:, 1:]
cfg = TrainConfig(workers=2, grad_clip=1e-3, grad_accum=2)   # a clip that always scales
trainer = Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], cfg, ".", quiet=True, split=split_rows)
per_step = []
for _ in range(3):
    reads.clear()
    loss = trainer.train_step(1e-3)
    per_step.append(list(reads))
from minigrad.models.data_parallel import DataParallel
dp = DataParallel(model, lambda m, b: m(b[0], b[1])[1], 2)
dp.step(split_rows(batches("train", np.random.default_rng(1)), 2))
reads.clear()
dp.clip_grad_norm_(1e-3)
print(json.dumps({"reads": per_step, "parallel": trainer.parallel is not None, "workers": trainer.workers,
                  "loss": loss, "strict": type(model.parameters()[0].data).__name__, "dp_clip_reads": reads}))
"""
    env = dict(os.environ, MINIGRAD_STRICT="cuda", MINIGRAD_KERNELS="off")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["strict"] == "StrictArray"
    assert out["parallel"] is False and out["workers"] == 1
    assert np.isfinite(out["loss"])
    outside_ops = [[r for r in step if not r.startswith("ops:")] for step in out["reads"]]
    assert outside_ops == [["__float__"]] * 3, f"device reads per step outside the ops: {out['reads']}"
    # inside the model's forward and backward (2 micro-batches a step): the index, target and
    # non-finite checks and the count of valid targets read nothing (backend.check_values); what
    # is left is the stand-in's own scatter of the embedding gradient, whose NumPy-side loop reads
    # its longest segment once (on CuPy a kernel sums the segments, but the flatnonzero that finds
    # them syncs once there too: shape.py, not changed here)
    inside = [[r for r in step if r.startswith("ops:")] for step in out["reads"]]
    assert inside == [["ops:__int__"] * 2] * 3, f"device reads per step inside the ops: {out['reads']}"
    assert out["dp_clip_reads"] == []              # DataParallel's clip on device arrays: on the device too


# ============================================================================ with MPI (real ranks)

MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None or not sys.platform.startswith("linux"),
    reason="needs mpiexec and mpi4py on Linux: pip install 'minigrad[mpi]' (mpi4py and the mpich wheel)")


def _mpirun(n, *train_args, dir=None, fault=None, timeout=240, launcher_args=(), env=None):
    """`mpiexec -n N python tests/mpi_rank.py ... -- train args`; returns (completed process, seconds)."""
    opts = []
    if dir is not None:
        opts += ["--dir", str(dir)]
    if fault is not None:
        opts += ["--fault", fault]
    cmd = [MPIEXEC, *launcher_args, "-n", str(n), sys.executable, str(HERE / "mpi_rank.py"), *opts, "--",
           *map(str, train_args)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    return proc, time.monotonic() - t0


def _one(capsys, *train_args):
    from minigrad.models import cli

    code = cli.main(["train", *map(str, train_args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _arrays(out_dir):
    from minigrad.models.checkpoint import load_checkpoint

    ck = load_checkpoint(out_dir)
    return ck, {f"{g}/{k}": v for g, arrays in ck.arrays.items() for k, v in arrays.items()}


def _assert_same_run(a_dir, b_dir):
    """Same log (every loss, lr, evaluation) and same checkpoint arrays, bit for bit."""
    assert read_log(a_dir / "log.jsonl") == read_log(b_dir / "log.jsonl")
    (ck_a, a), (ck_b, b) = _arrays(a_dir), _arrays(b_dir)
    assert ck_a.meta["step"] == ck_b.meta["step"] and set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@needs_mpi
@pytest.mark.parametrize("transport", ["shared-memory", "tcp"])
def test_two_ranks_equal_one_process_on_the_same_global_batch_bit_for_bit(tmp_path, corpus, capsys, transport):
    """tcp: MPICH forced onto TCP (MPIR_CVAR_NOLOCAL=1), what two machines use."""
    common = ["--data", corpus, "--max-iters", 6, "--eval-interval", 3, *TINY]
    code, out, err = _one(capsys, *common, "--out-dir", tmp_path / "one", "--batch-size", 8, "--workers", 2)
    assert code == 0, err
    env = {"MPIR_CVAR_NOLOCAL": "1"} if transport == "tcp" else {}
    proc, _ = _mpirun(2, *common, "--out-dir", tmp_path / "two", "--batch-size", 4, "--workers", 1, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == out.strip().splitlines()      # one val_loss line, the same one
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    meta = _arrays(tmp_path / "two")[0].meta
    assert meta["ranks"] == 2 and meta["train_config"]["batch_size"] == 4


@needs_mpi
def test_seq2seq_on_two_ranks_equals_one_process_bit_for_bit(tmp_path, capsys):
    """Its shards are weighted by their target tokens (unequal): 2 x that share, halved, is exact."""
    common = [*S2S, "--max-iters", 4, "--eval-interval", 2]
    code, out, err = _one(capsys, *common, "--out-dir", tmp_path / "one", "--batch-size", 8, "--workers", 2)
    assert code == 0, err
    proc, _ = _mpirun(2, *common, "--out-dir", tmp_path / "two", "--batch-size", 4, "--workers", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == out.strip().splitlines()[-1].strip()   # exact_match=...
    _assert_same_run(tmp_path / "one", tmp_path / "two")


@needs_mpi
def test_resume_on_two_ranks_logs_the_uninterrupted_run_and_rank_0_alone_writes(tmp_path, corpus):
    """Each rank runs in its own folder with a relative --out-dir (machines sharing no disk): rank 0
    reads and writes its own, rank 1 gets the checkpoint by broadcast and writes nothing."""
    common = ["--data", corpus, "--eval-interval", 3, "--lr-decay-iters", 6, "--dropout", 0.1, "--batch-size", 3,
              "--workers", 1, *TINY, "--final-eval-iters", 4]    # step 3 is the cut run's final evaluation
    proc, _ = _mpirun(2, *common, "--max-iters", 6, "--out-dir", "run", dir=tmp_path / "ref")
    assert proc.returncode == 0, (tmp_path / "ref" / "rank0.err").read_text()
    proc, _ = _mpirun(2, *common, "--max-iters", 3, "--out-dir", "run", dir=tmp_path / "cut")
    assert proc.returncode == 0, (tmp_path / "cut" / "rank0.err").read_text()
    proc, _ = _mpirun(2, "--resume", "--max-iters", 6, "--out-dir", "run", "--quiet", dir=tmp_path / "cut")
    assert proc.returncode == 0, (tmp_path / "cut" / "rank0.err").read_text() + (tmp_path / "cut" / "rank1.err").read_text()
    reference = read_log(tmp_path / "ref" / "rank0" / "run" / "log.jsonl")
    assert [r["step"] for r in reference] == [1, 2, 3, 4, 5, 6]
    assert read_log(tmp_path / "cut" / "rank0" / "run" / "log.jsonl") == reference     # bit for bit
    for run in ("ref", "cut"):
        assert list((tmp_path / run / "rank1").iterdir()) == [], "rank 1 wrote files"
        assert (tmp_path / run / "rank1.out").read_text() == "" and (tmp_path / run / "rank1.err").read_text() == ""
        assert (tmp_path / run / "rank0.out").read_text().startswith("val_loss=")
        assert {p.name for p in (tmp_path / run / "rank0" / "run").iterdir()} >= {"log.jsonl", "latest.json"}


@needs_mpi
def test_a_two_rank_checkpoint_resumes_in_one_process_with_the_same_global_batch(tmp_path, corpus, capsys):
    common = ["--data", corpus, "--eval-interval", 3, "--lr-decay-iters", 6, *TINY, "--final-eval-iters", 4]
    code, _, err = _one(capsys, *common, "--max-iters", 6, "--out-dir", tmp_path / "ref", "--batch-size", 8,
                        "--workers", 2)
    assert code == 0, err
    proc, _ = _mpirun(2, *common, "--max-iters", 3, "--out-dir", tmp_path / "cut", "--batch-size", 4, "--workers", 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code, _, err = _one(capsys, "--resume", "--max-iters", 6, "--out-dir", tmp_path / "cut", "--workers", 2, "--quiet")
    assert code == 0, err
    assert "--batch-size 8 per rank keeps its global batch of 8" in err
    _assert_same_run(tmp_path / "ref", tmp_path / "cut")


@needs_mpi
def test_another_number_of_ranks_that_cannot_share_the_batch_is_refused_once(tmp_path, corpus, capsys):
    common = ["--data", corpus, "--eval-interval", 2, *TINY]
    assert _one(capsys, *common, "--max-iters", 2, "--out-dir", tmp_path / "run", "--batch-size", 5)[0] == 0
    proc, _ = _mpirun(2, "--resume", "--max-iters", 4, "--out-dir", tmp_path / "run", "--quiet")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, proc.stderr
    assert "global batch of 5, which 2 ranks cannot share evenly" in err[0] and err[0].startswith("minigrad train: error:")


@needs_mpi
def test_a_setup_error_on_one_rank_is_reported_once_and_every_rank_exits(tmp_path, corpus):
    proc, _ = _mpirun(2, "--data", corpus, "--max-iters", 4, "--out-dir", tmp_path / "run", *TINY,
                      fault="raise-setup", timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and err == [("minigrad train: error: rank 1: --data corpus.txt: no such file "
                                             "(planted on rank 1)")], proc.stderr
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_an_error_on_one_rank_during_training_ends_the_job_with_one_line(tmp_path, corpus):
    proc, seconds = _mpirun(2, "--data", corpus, "--max-iters", 50, "--out-dir", tmp_path / "run", *TINY,
                            fault="raise-train", timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("minigrad train: error:")]
    assert "minigrad train: error: rank 1: RuntimeError: planted failure in step 3; ending all 2 ranks" in lines, \
        proc.stderr
    # rank 0 is ended by mpiexec, or first sees its allreduce fail and says so in one line of its own
    others = [ln for ln in lines if "rank 1: RuntimeError" not in ln]
    assert all(ln.startswith("minigrad train: error: rank 0: lost the other ranks") for ln in others), proc.stderr
    assert len(lines) <= 2 and seconds < 60


@needs_mpi
def test_a_hung_rank_is_reported_by_the_others_within_the_timeout(tmp_path, corpus):
    proc, seconds = _mpirun(2, "--data", corpus, "--max-iters", 50, "--out-dir", tmp_path / "run", *TINY,
                            "--dist-timeout", 3, fault="hang-train", timeout=120)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("minigrad train: error:")]
    assert lines == [("minigrad train: error: rank 0: no answer from the other ranks for 3 s (waiting in allreduce): "
                      "a rank died or hangs; ending all 2 ranks")], (proc.returncode, proc.stdout, proc.stderr)
    assert seconds < 3 + 30          # the timeout, plus start-up and the watchdog's period on a busy machine


def _job_processes(token: str) -> list[str]:
    """The live processes (not zombies) whose environment holds ``TEST_JOB=token``: mpiexec, its
    proxies, the ranks and their workers all inherit it."""
    left = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and f"TEST_JOB={token}".encode() in (p / "environ").read_bytes() and not _zombie(p.name):
                cmdline = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                left.append(f"{p.name}: {cmdline}")
        except OSError:
            pass
    return left


def _kill_rank_1(cmd, work, log, cwd, min_lines=2):
    """Start ``cmd`` in ``cwd``, wait for rank 0's ``log`` to reach ``min_lines`` steps, SIGKILL rank 1
    (its PID in work/rank1.pid); returns (process, stdout, stderr, seconds from the kill to the
    job's end, the TEST_JOB token of its processes)."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ, TEST_JOB=token))
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text().count("\n") >= min_lines):
            assert proc.poll() is None and time.monotonic() < deadline, ("training did not start", proc.poll())
            time.sleep(0.2)
        os.kill(int((work / "rank1.pid").read_text()), signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, out, err, seconds, token


@needs_mpi
def test_a_killed_rank_under_plain_mpiexec_ends_the_job_in_bounded_time_leaving_no_process(tmp_path, corpus):
    """MPICH's mpiexec ends the others at once (SIGKILL: no rank can speak) and prints its own
    banner; another launcher leaves it to the watchdog, whose line names the rank that waited."""
    work = tmp_path / "ranks"
    cmd = [MPIEXEC, "-n", "2", sys.executable, str(HERE / "mpi_rank.py"), "--dir", str(work), "--",
           "--data", str(corpus), "--max-iters", "100000", "--eval-interval", "100000", "--out-dir", "run",
           "--dist-timeout", "20", *TINY]
    proc, out, err, seconds, token = _kill_rank_1(cmd, work, work / "rank0" / "run" / "log.jsonl", cwd=tmp_path)
    assert proc.returncode != 0 and seconds < 60
    said = out + err + (work / "rank0.err").read_text()
    assert "signal 9" in said or "no answer from the other ranks" in said, said
    time.sleep(0.5)                      # the proxies' last exits
    assert _job_processes(token) == [], "processes outlived the job"


@needs_mpi
def test_a_killed_rank_under_minigrad_launch_is_one_line_naming_it_its_signal_and_the_checkpoint(tmp_path, corpus):
    """`minigrad launch` turns mpiexec's banner into our one line, and nothing else is printed."""
    work = tmp_path / "job"
    work.mkdir()
    args = ["--data", str(corpus), "--max-iters", "100000", "--eval-interval", "2", "--out-dir", "run",
            "--dist-timeout", "20", *TINY]
    cmd = [sys.executable, "-m", "minigrad.cli", "launch", "--exec",
           f"{sys.executable} {HERE / 'mpi_rank.py'} --pids {work} --", "-n", "2", "train", *args]
    proc, out, err, seconds, token = _kill_rank_1(cmd, work, work / "run" / "log.jsonl", cwd=work, min_lines=3)
    assert proc.returncode == 1 and seconds < 60
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    pid = int((work / "rank1.pid").read_text())
    from minigrad.models.checkpoint import latest_name

    ckpt = work / "run" / latest_name(work / "run")
    resume = shlex.join(["minigrad", "launch", "-n", "2", "train", *args, "--resume"])
    assert lines[0] == (f"minigrad train: error: rank 1 (PID {pid} on {socket.gethostname()}) was killed by SIGKILL "
                        "(the out-of-memory killer sends SIGKILL); mpiexec ended the other rank; the last checkpoint, "
                        f"{ckpt}, is kept; continue with {resume}"), err
    time.sleep(0.5)
    assert _job_processes(token) == [], "processes outlived the job"


@needs_mpi
@pytest.mark.parametrize("fault", ["raise-train", "hang-train"])
def test_under_minigrad_launch_a_raising_or_hung_rank_prints_only_its_one_line(tmp_path, corpus, fault):
    """No MPI_Abort line, no banner: the raising rank's line (after its traceback: a bug), or the
    watchdog's, alone."""
    cmd = [sys.executable, "-m", "minigrad.cli", "launch", "--exec",
           f"{sys.executable} {HERE / 'mpi_rank.py'} --fault {fault} --", "-n", "2", "train", "--data", str(corpus),
           "--max-iters", "50", "--out-dir", str(tmp_path / "run"), "--dist-timeout", "3", *TINY]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert proc.returncode == 1 and proc.stdout == "" and seconds < 60, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    if fault == "hang-train":
        assert lines == [("minigrad train: error: rank 0: no answer from the other ranks for 3 s (waiting in "
                          "allreduce): a rank died or hangs; ending all 2 ranks")], proc.stderr
        return
    errors = [ln for ln in lines if ln.startswith("minigrad train: error:")]
    assert "minigrad train: error: rank 1: RuntimeError: planted failure in step 3; ending all 2 ranks" in errors
    assert all(ln.startswith("minigrad train: error: rank 0: lost the other ranks") for ln in errors
               if "rank 1: RuntimeError" not in ln), proc.stderr
    assert lines[0] == "Traceback (most recent call last):" and lines[-1] in errors, proc.stderr
    assert not any(ln.startswith(("Abort(", "=")) for ln in lines), proc.stderr


FAKE_MPIEXEC = """#!{python}
# stands in for mpiexec: the ranks' start lines, a progress line in pieces, then {ending}
import os, sys, time
def err(b): os.write(2, b); time.sleep(0.05)
def out(b): os.write(1, b); time.sleep(0.05)
{announce}
err(b"step 1/9")
err(b" loss 3.2\\n")
{body}
"""
BANNER = ("out(b'\\n' + b'=' * 83 + b'\\n=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\\n=   PID 102 ')\n"
          "out(b'RUNNING AT h0\\n=   EXIT CODE: 9\\n=   CLEANING UP REMAINING PROCESSES\\n')\n"
          "out(b'=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES\\n' + b'=' * 83 + b'\\nYOUR APPLICATION TERMINATED ')\n"
          "out(b'WITH THE EXIT STRING: Killed (signal 9)\\nThis typically refers to a problem with your application.\\n"
          "Please see the FAQ page for debugging suggestions\\n')\nsys.exit(9)")
# the ranks' start lines: in pieces, or run together on one line (two ranks' writes interleaved)
ANNOUNCE = {"pieces": ("err(b'minigrad-launch: {{\"rank\": 0, \"pid\": 101, \"host\": \"h0\", \"cwd\": \"{cwd}\"}}')\n"
                      "err(b'\\nminigrad-launch: {{\"rank\": 1, \"pid\": 102, \"host\": \"h0\", \"cwd\": \"{cwd}\"}}\\n')"),
            "together": ("err(b'minigrad-launch: {{\"rank\": 1, \"pid\": 102, \"host\": \"h0\", \"cwd\": \"{cwd}\"}}')\n"
                         "err(b'minigrad-launch: {{\"rank\": 0, \"pid\": 101, \"host\": \"h0\", \"cwd\": \"{cwd}\"}}')\n"
                         "err(b'\\n')\nerr(b'\\n')")}
ABORT = ("err(b'minigrad train: error: rank 1: ')\nerr(b'planted; ending all 2 ranks\\n')\n"
         "err(b'Abort(1) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 1) - process 1\\n')\n"
         "sys.exit(1)")


@pytest.mark.parametrize("announce", ["pieces", "together"])
@pytest.mark.parametrize("ending", ["banner", "abort"])
def test_minigrad_launch_passes_output_through_and_replaces_mpiexecs_lines_with_one(tmp_path, ending, announce):
    """Without MPI: a stand-in mpiexec prints what MPICH's does, in pieces; `minigrad launch` passes
    the ranks' lines on and turns a killed rank's banner into one line (the rank found by its PID)."""
    run = tmp_path / "run"
    if ending == "banner":                        # a checkpoint for the line to name
        (run / "ckpt-0000004").mkdir(parents=True)
        (run / "latest.json").write_text(json.dumps({"checkpoint": "ckpt-0000004"}))
    fake = tmp_path / "mpiexec"
    fake.write_text(FAKE_MPIEXEC.format(python=sys.executable, cwd=tmp_path, ending=ending,
                                        body=BANNER if ending == "banner" else ABORT,
                                        announce=ANNOUNCE[announce].format(cwd=tmp_path)))
    fake.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "minigrad.cli", "launch", "--mpiexec", str(fake), "-n", "2",
                           "train", "--out-dir", "run", "--max-iters", "9"], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout == ""
    if ending == "abort":
        assert proc.returncode == 1
        assert proc.stderr == "step 1/9 loss 3.2\nminigrad train: error: rank 1: planted; ending all 2 ranks\n"
        return
    from minigrad.models.checkpoint import latest_name

    assert latest_name(run) == "ckpt-0000004", "the stand-in checkpoint is not one latest_name reads"
    assert proc.returncode == 1
    assert proc.stderr == (
        "step 1/9 loss 3.2\nminigrad train: error: rank 1 (PID 102 on h0) was killed by SIGKILL (the out-of-memory "
        f"killer sends SIGKILL); mpiexec ended the other rank; the last checkpoint, {run / 'ckpt-0000004'}, is kept; "
        "continue with minigrad launch -n 2 train --out-dir run --max-iters 9 --resume\n"), proc.stderr


def _zombie(pid) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@needs_mpi
def test_one_mpi_rank_with_fork_workers_runs_the_distributed_path_and_equals_one_process(tmp_path, corpus, capsys):
    """`--dist mpi` on one rank: the gradient buffer, the allreduce and the evaluation spread all
    run (as ChainerMN's CI runs its tests at -n 1), with two data-parallel workers forked after
    MPI started, and change no bit."""
    common = ["--data", corpus, "--max-iters", 4, "--eval-interval", 2, "--batch-size", 4, "--workers", 2, *TINY]
    code, _, err = _one(capsys, *common, "--out-dir", tmp_path / "one")
    assert code == 0, err
    proc, _ = _mpirun(1, *common, "--out-dir", tmp_path / "mpi", "--dist", "mpi")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(tmp_path / "one", tmp_path / "mpi")


@needs_mpi
def test_two_ranks_with_two_fork_workers_each_train(tmp_path, corpus):
    """The within-machine workers under each rank: four slices, summed two by two (not bit-equal
    to another split, so this checks that it trains and ends cleanly)."""
    proc, _ = _mpirun(2, "--data", corpus, "--max-iters", 4, "--eval-interval", 4, "--batch-size", 4, "--workers", 2,
                      "--out-dir", tmp_path / "run", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("val_loss=") and proc.stdout.count("\n") == 1
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and np.isfinite([r["loss"] for r in log]).all()
    assert _arrays(tmp_path / "run")[0].meta["train_config"]["workers"] == 2


def test_bench_ranks_refuses_what_it_cannot_time(capsys):
    from minigrad.models import cli

    assert cli.main(["bench", "train", "--ranks", "1"]) == 1
    assert cli.main(["bench", "train", "--ranks", "2", "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["minigrad bench train: error: --ranks N times MPI ranks on the CPU: N at least 2, --device cpu"] * 2
