"""What a person sees of a run: the progress bar, the log.jsonl records and the loss curve.

log.jsonl holds one JSON record per logged step ({"step", "loss", "lr"}, plus "train_loss" and
"val_loss" at evaluations); loss.png is drawn from it at the end of a run.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


class Progress:
    """tqdm bar with loss, lr and tok/s; plain lines every `every` steps when tqdm is missing.

    The bar appears after the first step of the run: that step also compiles native code and
    faults in fresh memory, so leaving it out keeps the rate and the ETA those of training. A
    stream that can no longer be written (a closed pipe, a hung-up terminal) disables the display
    and calls ``on_broken()`` once; the run itself goes on, or stops as on_broken decides.
    """

    def __init__(self, total: int, initial: int, every: int = 50, stream=None, disable=False,
                 on_broken=None):
        self.stream, self.every, self.disable = stream or sys.stderr, every, disable
        self.total, self.on_broken = total, on_broken
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self._tqdm = tqdm if not disable else None
        self.bar = None
        self.broken = False

    def _guard(self, fn, *args, **kwargs):
        """Run a display call; a closed or hung-up stream turns the display off instead of raising."""
        if self.broken:
            return None
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError):      # BrokenPipeError, EIO after SIGHUP; ValueError: closed file
            self.broken, self.disable, self.bar = True, True, None
            if self.on_broken is not None:
                self.on_broken()
            return None

    def update(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        if self.disable:
            return
        postfix = f"loss={loss:.4f} lr={lr:.2e} tok/s={tok_s:,.0f}"
        if self._tqdm is not None:
            if self.bar is None:       # after the run's first step: its time is not in the rate
                self.bar = self._guard(self._tqdm, total=self.total, initial=step, file=self.stream,
                                       dynamic_ncols=True, unit="step", smoothing=0.1, postfix=postfix)
            else:
                self._guard(self.bar.set_postfix_str, postfix, refresh=False)
                self._guard(self.bar.update, 1)
        elif step % self.every == 0:
            self._guard(print, f"step {step}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s", file=self.stream,
                        flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self._guard(self.bar.write, line, file=self.stream)
        elif not self.disable:
            self._guard(print, line, file=self.stream, flush=True)

    @contextlib.contextmanager
    def task(self, total: int, desc: str):
        """A second, transient bar for a long sub-task (the final evaluation): yields tick(), to be
        called once per unit of work; a no-op without tqdm or when disabled."""
        bar = None
        if self._tqdm is not None and not self.disable:
            bar = self._guard(self._tqdm, total=total, desc=desc, file=self.stream, dynamic_ncols=True,
                              leave=False, unit="batch", position=1 if self.bar is not None else 0)

        def tick():
            if bar is not None and not self.broken:
                self._guard(bar.update, 1)

        try:
            yield tick
        finally:
            if bar is not None and not self.broken:
                self._guard(bar.close)

    def close(self) -> None:
        if self.bar is not None:
            self._guard(self.bar.close)


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
    """Loss curve PNG at `path`; returns a note instead when matplotlib is missing or the file
    cannot be written (the run's results are saved by then; the curve is a convenience)."""
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
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return f"could not write the loss curve {path}: {e.strerror}"
    finally:
        plt.close(fig)
    return None


def rewrite_log(path, records: list[dict]) -> None:
    """Replace log.jsonl with ``records`` (atomically: a temp file renamed over it; the temp file
    is removed if the write fails)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LogFile:
    """log.jsonl opened for appending, one record per ``append``, written straight to the file
    (no buffer): a failed write raises at once and leaves nothing pending, at most a torn last line,
    which read_log ignores."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)

    def append(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
