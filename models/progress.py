"""What a person sees of a run: the progress bar, the log.jsonl records and the loss curve.

log.jsonl holds one JSON record per logged step ({"step", "loss", "lr"}, plus "train_loss" and
"val_loss" at evaluations); loss.png is drawn from it at the end of a run.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class Progress:
    """tqdm bar with loss, lr and tok/s; plain lines every `every` steps when tqdm is missing."""

    def __init__(self, total: int, initial: int, every: int = 50, stream=sys.stderr, disable=False):
        self.stream, self.every, self.disable = stream, every, disable
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = None
        if tqdm is not None and not disable:
            self.bar = tqdm(total=total, initial=initial, file=stream, dynamic_ncols=True, unit="step",
                            smoothing=0.1)

    def update(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4f} lr={lr:.2e} tok/s={tok_s:,.0f}", refresh=False)
            self.bar.update(1)
        elif not self.disable and step % self.every == 0:
            print(f"step {step}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s", file=self.stream, flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif not self.disable:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_log(path) -> list[dict]:
    """The records of a log.jsonl (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def plot_log(records: list[dict], path) -> str | None:
    """Loss curve PNG at `path`; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss curve (pip install matplotlib)"
    steps = [r["step"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in records if "loss" in r], lw=0.8, alpha=0.6, label="train (step)")
    ev = [r for r in records if "val_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["train_loss"] for r in ev], "o-", label="train (eval)")
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def rewrite_log(path, records: list[dict]) -> None:
    """Replace log.jsonl with ``records`` (atomically: a temp file renamed over it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
