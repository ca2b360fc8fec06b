"""`minigrad bench scaling` on a tiny model: the CSV has every point, the plots are PNGs, the
memory figure grows with T. Timings are not asserted (they are the bench's output, not a test)."""
from __future__ import annotations

import argparse
import csv

import pytest

from minigrad.models import scaling


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench_command", required=True)
    scaling.add_bench_subcommands(sub)
    return parser.parse_args(["scaling", *argv])


def test_tiny_scaling_run_writes_csv_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib")
    args = _parse(["--seq-lens", "32,16", "--contexts", "8,24", "--steps", "2", "--warmup", "1", "--n-layer", "1",
                   "--n-head", "2", "--n-embd", "16", "--batch-size", "2", "--out-dir", str(tmp_path)])
    assert args.seq_lens == [16, 32]
    assert scaling.run(args) == 0
    with open(tmp_path / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["study"] == "train_step"]
    gen = [r for r in rows if r["study"] == "generate"]
    assert [(r["variant"], int(r["seq_len"])) for r in train] == [("reference", 16), ("reference", 32)]
    assert sorted((r["variant"], int(r["seq_len"])) for r in gen) == [
        ("kv_cache", 8), ("kv_cache", 24), ("no_cache", 8), ("no_cache", 24)]
    for r in rows:
        assert float(r["median_ms"]) > 0 and float(r["min_ms"]) <= float(r["median_ms"])
    for r in train:
        assert 0 < float(r["attention_ms"])
    # twice the tokens, and a (T, T) attention matrix per head: the step's peak must grow
    assert float(train[1]["peak_mib"]) > 1.5 * float(train[0]["peak_mib"]) > 0
    for name in ("scaling_train.png", "scaling_generate.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "growth between T=16 and T=32" in out and "wrote" in out


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _parse(["--seq-lens", "64,abc"])
    args = _parse(["--n-embd", "30", "--n-head", "4", "--out-dir", str(tmp_path)])
    assert scaling.run(args) == 1
    assert "not divisible" in capsys.readouterr().err


def test_growth_exponent():
    assert scaling.growth_exponent([256, 512], [3.0, 12.0]) == pytest.approx(2.0)
    assert scaling.growth_exponent([1], [1.0]) != scaling.growth_exponent([1], [1.0])   # nan
