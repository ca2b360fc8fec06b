"""`minigrad eval`, `minigrad bench generate`, and `--weights` on the inference commands."""
import importlib.util

import pytest

from conftest import CORPUS
from minigrad.models import cli
from test_train import TINY

pytest.importorskip("safetensors", reason="checkpoints need the optional 'safetensors' package")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp / "run"
    assert cli.main(["train", "--data", str(corpus), "--out-dir", str(out), "--max-iters", "6",
                     "--eval-interval", "3", *TINY]) == 0
    return out


def _log(run_dir):
    from minigrad.models.progress import read_log
    return {r["step"]: r for r in read_log(run_dir / "log.jsonl") if "val_loss" in r}


def test_eval_prints_the_val_loss_the_trainer_logged(run_dir, capsys):
    from minigrad.models.evaluate import evaluate_checkpoint

    capsys.readouterr()
    logged = _log(run_dir)
    r = evaluate_checkpoint(run_dir)                     # the last step: the final evaluation
    assert r["step"] == 6 and r["iters"] == 3
    assert r["val_loss"] == logged[6]["val_loss"] and r["train_loss"] == logged[6]["train_loss"]
    assert cli.main(["eval", "--ckpt", str(run_dir)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"val_loss={logged[6]['val_loss']:.6f}"
    best = min(logged, key=lambda s: logged[s]["val_loss"])   # --best: an earlier step's evaluation
    r = evaluate_checkpoint(run_dir, which="best")
    assert r["step"] == best and r["val_loss"] == logged[best]["val_loss"]


@pytest.mark.parametrize("argv, msg", [
    (["--ckpt", "/nonexistent/run"], "/nonexistent/run"),
    (["--weights", "int4"], "--weights must be one of float32, bfloat16, int8, got 'int4'"),
])
def test_eval_bad_input_gets_one_line(run_dir, capsys, argv, msg):
    argv = argv if "--ckpt" in argv else ["--ckpt", str(run_dir), *argv]
    capsys.readouterr()
    assert cli.main(["eval", *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("minigrad eval: error: ") and msg in err


@pytest.mark.parametrize("weights", ["float32", "bfloat16", "int8"])
def test_generate_with_each_weight_type(run_dir, capsys, weights):
    capsys.readouterr()
    code = cli.main(["generate", "--ckpt", str(run_dir), "--prompt", "HAM", "--max-new-tokens", "12",
                     "--weights", weights])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("HAM") and len(out) == 3 + 12 + 1


def _bench(capsys, *argv):
    capsys.readouterr()
    code = cli.main(["bench", "generate", "--config", "tiny", "--steps", "10", "--warmup", "1",
                     "--probe-mib", "32", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("context", [16, 40])   # 40 > block_size 32: the window forward
def test_bench_generate_prints_the_documented_lines(capsys, context):
    code, out, err = _bench(capsys, "--context", str(context), "--no-torch")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("decode_ms_per_token=") and float(lines[-1].split("=")[1]) > 0
    text = "\n".join(lines)
    for piece in ("memory bandwidth:", "GB/s read", "weights: ", "bytes", "prefill", "ms/token", "x the floor"):
        assert piece in text, piece
    assert ("past block_size" in text) == (context > 32)
    assert "torch" not in text


def test_bench_generate_runs_the_torch_reference(capsys):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed: the reference line needs it (the bench notes its absence)")
    code, out, err = _bench(capsys, "--context", "16")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "torch" in ln)
    assert "eager float32" in line and "minigrad/torch decode" in line


def test_bench_generate_torch_mirror_gives_our_logits():
    """The torch reference runs the same model: its last logits equal ours (prefill and a cached step)."""
    torch = pytest.importorskip("torch", reason="the torch reference needs torch")
    import numpy as np

    import minigrad
    from minigrad.models.bench_generate import _torch_gpt, make_model

    m = make_model("tiny", 3)
    tm = _torch_gpt(m)
    ids = np.random.default_rng(0).integers(0, 84, (1, 9))
    with minigrad.no_grad(), torch.inference_mode():
        for T, start in ((8, 0), (1, 8)):
            ours = m(ids[:, :start + T], last_only=True)[0].numpy()[:, -1]
            theirs = tm.forward(torch.from_numpy(ids[:, start:start + T]), start).numpy()
            # float32, dot products of length <= 4 n_embd summed in other orders: n roundings each
            tol = 4 * m.config.n_embd * float(np.finfo(np.float32).eps) * np.abs(ours).max()
            assert np.allclose(ours, theirs, rtol=0, atol=tol)


@pytest.mark.parametrize("argv, msg", [
    (["--context", "0"], "--context must be at least 1"),
    (["--weights", "fp8"], "--weights must be one of"),
])
def test_bench_generate_bad_flags(capsys, argv, msg):
    code, _, err = _bench(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and msg in err
