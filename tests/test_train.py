"""Checkpoint I/O, the lr schedule, the training loop (resume, eval isolation, Ctrl-C), `minigrad train`."""
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from minigrad.models import checkpoint as C
from minigrad.models.progress import read_log
from minigrad.models.train_config import TrainConfig, lr_at
from conftest import CORPUS

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


# --------------------------------------------------------------------------- the training loop and `minigrad train`

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--batch-size", "4",
        "--warmup-iters", "2", "--eval-iters", "2", "--final-eval-iters", "3", "--lr", "3e-3", "--quiet"]


def _train(capsys, *argv):
    from minigrad.models import cli

    code = cli.main(["train", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_train_cli_logs_evaluates_checkpoints_and_ends_with_val_loss(tmp_path, corpus, capsys):
    out_dir = tmp_path / "run"
    code, out, err = _train(capsys, "--data", corpus, "--out-dir", out_dir, "--max-iters", 6,
                            "--eval-interval", 3, *TINY)
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("val_loss=")
    log = read_log(out_dir / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) >= {"step", "loss", "lr"} for r in log)
    assert [r["step"] for r in log if "val_loss" in r] == [3, 6]
    assert float(last.split("=")[1]) == pytest.approx(log[-1]["val_loss"], abs=5e-5)
    assert log[-1]["loss"] < log[0]["loss"]  # it learns
    ck = C.load_checkpoint(out_dir)
    assert ck.meta["step"] == 6 and ck.meta["model_config"]["n_embd"] == 16
    assert ck.meta["tokenizer"] == {"kind": "char", "chars": "".join(sorted(set(CORPUS)))}
    try:
        import matplotlib  # noqa: F401
        assert (out_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "matplotlib is not installed" in err


def test_ctrl_c_saves_and_resume_logs_the_same_losses(tmp_path, corpus, capsys, monkeypatch):
    from minigrad.models.trainer import Trainer

    common = ["--data", corpus, "--max-iters", 10, "--eval-interval", 4, "--dropout", "0.1", *TINY]
    assert _train(capsys, "--out-dir", tmp_path / "ref", *common)[0] == 0
    reference = read_log(tmp_path / "ref" / "log.jsonl")

    real_step = Trainer.train_step

    def press_ctrl_c_during_step_5(self, lr):
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only flags: step 5 completes first
        return real_step(self, lr)

    monkeypatch.setattr(Trainer, "train_step", press_ctrl_c_during_step_5)
    code, out, err = _train(capsys, "--out-dir", tmp_path / "cut", *common)
    monkeypatch.undo()
    assert code == 130 and "interrupted: saved step 5" in err and "val_loss=" not in out
    assert C.load_checkpoint(tmp_path / "cut").meta["step"] == 5
    code, out, err = _train(capsys, "--out-dir", tmp_path / "cut", "--resume", "--quiet")
    assert code == 0, err
    resumed = read_log(tmp_path / "cut" / "log.jsonl")
    assert resumed == reference  # every loss, lr and eval loss, bit for bit
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_drops_log_lines_past_the_checkpoint(tmp_path, corpus, capsys):
    out_dir = tmp_path / "run"
    common = ["--data", corpus, "--eval-interval", 3, *TINY]
    assert _train(capsys, "--out-dir", out_dir, "--max-iters", 6, *common)[0] == 0
    reference = read_log(out_dir / "log.jsonl")
    # a crash after step 7 was logged but before its checkpoint: the log runs ahead of step 6
    with open(out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "loss": 9.0, "lr": 0.0}) + "\n")
    assert _train(capsys, "--out-dir", out_dir, "--resume", "--max-iters", 9, "--quiet")[0] == 0
    log = read_log(out_dir / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 10)) and log[:6] == reference


def test_evaluation_does_not_shift_the_training_stream(tmp_path, corpus, capsys):
    common = ["--data", corpus, "--max-iters", 6, *TINY]
    assert _train(capsys, "--out-dir", tmp_path / "a", "--eval-interval", 1, *common)[0] == 0
    assert _train(capsys, "--out-dir", tmp_path / "b", "--eval-interval", 100, *common)[0] == 0
    a, b = read_log(tmp_path / "a" / "log.jsonl"), read_log(tmp_path / "b" / "log.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["val_loss"] == b[-1]["val_loss"]


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    from minigrad.models.data import prepare
    from minigrad.models.gpt import GPT, GPTConfig
    from minigrad.models.trainer import Trainer

    data = prepare(CORPUS, "corpus", cache=tmp_path / "cache")
    cfg_model = GPTConfig(vocab_size=data.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)

    def run(batch_size, grad_accum):
        model = GPT(cfg_model, seed=0)
        cfg = TrainConfig(max_iters=3, batch_size=batch_size, grad_accum=grad_accum, warmup_iters=0, lr=1e-3,
                          eval_interval=100, eval_iters=1, final_eval_iters=1)
        trainer = Trainer(model, lambda split, rng: data.get_batch(split, batch_size, 8, rng),
                          lambda m, b: m(b[0], b[1])[1], cfg, tmp_path / f"run{grad_accum}", quiet=True)
        trainer.run()
        return {n: p.numpy() for n, p in model.named_parameters()}

    big, accumulated = run(6, 1), run(3, 2)  # the same 6 sequences per step (one rng stream)
    for name in big:
        # equal gradients up to float32 rounding; Adam's first steps move each weight by ~lr
        assert np.allclose(big[name], accumulated[name], rtol=0, atol=1e-5), name


def test_weight_decay_applies_to_matrices_only():
    from minigrad.models.gpt import GPT, GPTConfig
    from minigrad.models.trainer import param_groups

    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())


def test_bad_requests_are_one_line_errors_and_overwrite_nothing(tmp_path, corpus, capsys):
    out_dir = tmp_path / "run"
    assert _train(capsys, "--data", corpus, "--out-dir", out_dir, "--max-iters", 3, "--eval-interval", 3,
                  *TINY)[0] == 0
    before = _snapshot(out_dir)
    other = tmp_path / "other.txt"
    other.write_text(CORPUS.upper())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cases = [
        (["--data", corpus], "already holds a checkpoint"),
        (["--resume", "--data", other], "another vocabulary"),
        (["--resume", "--n-embd", "32"], "n_embd=16, but --n-embd 32"),
        (["--resume"], "already at --max-iters 3"),
        (["--resume", "--force"], "contradict"),
        (["--force", "--data", empty], "empty"),
        (["--force", "--data", corpus, "--block-size", "5000"], "too short for block_size 5000"),
        (["--force", "--data", corpus, "--n-embd", "15", "--n-head", "2"], "not divisible"),
        (["--force", "--data", corpus, "--max-iters", "0"], "--max-iters must be at least 1"),
        (["--force", "--data", corpus, "--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
        (["--force", "--data", corpus, "--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    ]
    for argv, expected in cases:
        code, out, err = _train(capsys, "--out-dir", out_dir, "--quiet", *argv)
        assert code == 1 and expected in err and err.count("\n") == 1 and out == "", (argv, err)
        assert _snapshot(out_dir) == before, argv
    ckpt_dir = C.resolve(out_dir)
    model_file = ckpt_dir / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])
    code, out, err = _train(capsys, "--out-dir", out_dir, "--resume", "--max-iters", 5)
    assert code == 1 and "truncated" in err and err.count("\n") == 1
    from minigrad.models import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--bogus-flag", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus-flag" in err and err.count("\n") == 1


def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, corpus, capsys):
    from minigrad.models.cli_common import check_device

    if check_device("cuda") is None:
        pytest.skip("a GPU is visible: --device cuda is valid here")
    code, out, err = _train(capsys, "--data", corpus, "--out-dir", tmp_path / "run", "--device", "cuda")
    assert code == 1 and "--device cuda" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- bench train

def test_bench_torch_reference_is_the_same_model():
    pytest.importorskip("torch", reason="the PyTorch reference is optional (pip install torch)")
    from minigrad.models.bench import VOCAB, _minigrad_step, _torch_step
    from minigrad.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, VOCAB, 5000)
    torch_step, _ = _torch_step(model, cfg, tokens)  # copies the initial weights
    ours = _minigrad_step(model, cfg, tokens)
    for _ in range(3):  # same batches, same losses: forward, backward and AdamW agree
        a, b = ours(), torch_step()
        assert abs(a - b) <= 512 * np.finfo(np.float32).eps * abs(b), (a, b)


def test_bench_train_last_line(capsys, monkeypatch):
    from minigrad.models import bench, cli
    from minigrad.models.gpt import GPTConfig

    monkeypatch.setattr(bench, "BENCH_CONFIG", GPTConfig(vocab_size=bench.VOCAB, block_size=8, n_layer=1,
                                                         n_head=2, n_embd=16))  # the format, not the speed

    assert cli.main(["bench", "train", "--no-torch", "--no-gen", "--steps", "30", "--warmup", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("median_step_ms=") and float(last.split("=")[1]) > 0
    with pytest.raises(SystemExit):
        cli.main(["bench", "train", "--steps", "x"])
    assert cli.main(["bench", "train", "--steps", "5"]) == 1
    assert "at least 30" in capsys.readouterr().err


def test_tune_malloc_stops_per_step_page_faults():
    import resource

    from minigrad.models.trainer import tune_malloc

    if not sys.platform.startswith("linux") or not tune_malloc():
        pytest.skip("glibc's mallopt is not available here")
    def step():  # a training step's pattern: allocate MB-sized temporaries, free them
        a = np.ones(1 << 21, dtype=np.float32)
        b = np.ones(1 << 20, dtype=np.float32)
        del a, b

    step()  # the first touch of fresh heap pages faults in any case
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # glibc's defaults trim and re-fault these pages: about 1,000 faults here; tuned, the heap keeps them
    assert faults < 200, faults


def test_progress_and_plot_fall_back_without_tqdm_and_matplotlib(tmp_path, monkeypatch, capsys):
    import io

    from minigrad.models.progress import Progress, plot_log

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    stream = io.StringIO()
    p = Progress(total=4, initial=0, every=2, stream=stream)
    for step in range(1, 5):
        p.update(step, 2.5, 1e-3, 1234.0)
    p.write("step 4: eval")
    p.close()
    assert stream.getvalue().splitlines() == ["step 2: loss 2.5000, lr 1.00e-03, 1,234 tok/s",
                                              "step 4: loss 2.5000, lr 1.00e-03, 1,234 tok/s", "step 4: eval"]
    note = plot_log([{"step": 1, "loss": 1.0, "lr": 0.1}], tmp_path / "loss.png")
    assert "matplotlib is not installed" in note and not (tmp_path / "loss.png").exists()
