"""Timers around the op profiler: training phases, the machine's GEMM peak, generated tokens.

``PhaseTimer`` is the hook ``Trainer`` calls around data / forward / backward / optimizer (what
`minigrad train --profile` prints); ``matmul_peak`` is the probe its FLOP/s are set against;
``TokenTimer`` times prefill and per-token decode (`minigrad generate --profile`).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np

from .hook import profile

__all__ = ["PhaseTimer", "TokenTimer", "matmul_peak"]


# ---------------------------------------------------------------- phase timing
class PhaseTimer:
    """``with timer.phase(name):`` sums wall time per phase: the hook `minigrad.models.trainer.Trainer` calls
    around data / forward / backward / optimizer (and eval). A step starts at its first "data"
    phase and ends when "optimizer" ends.

    ``sync``: a callable run before each clock read (on a GPU: the device synchronize, so a phase
    is charged its own kernels). ``profile_step``: run that step (1-based) under
    ``minigrad.profile`` (data and optimizer as regions) and keep it as ``op_profile``; its time is
    left out of the per-step figures, since the hook slows it a little.
    """

    # "forward+backward": a data-parallel step (models/data_parallel.py) times the two together
    STEP_PHASES = ("data", "forward", "backward", "forward+backward", "optimizer")

    def __init__(self, sync=None, profile_step: int | None = None):
        self.sync = sync
        self.profile_step = profile_step
        self.totals: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps: list[dict] = []        # per finished step: {phase: seconds}, the profiled one excluded
        self.op_profile = None
        self.profiled_step_s = 0.0
        self._cur: dict | None = None
        self._n = 0
        self._prof = None
        self.t_first = None

    @classmethod
    def for_device(cls, device: str = "cpu", profile_step: int | None = 2) -> PhaseTimer:
        """A timer that synchronizes the GPU before each clock read when ``device`` is "cuda"."""
        sync = None
        if device == "cuda":
            import cupy
            sync = cupy.cuda.Device().synchronize
        return cls(sync=sync, profile_step=profile_step)

    def summary(self, tokens_per_step: int, device: str = "cpu", top: int = 12) -> str:
        """What `minigrad train --profile` prints: the op table of the profiled step, the phase
        breakdown, tokens/s and achieved FLOP/s beside the GEMM probe's peak."""
        xp = None
        if device == "cuda":
            import cupy as xp
        peak, note = matmul_peak(xp=xp)
        parts = []
        if self.op_profile is not None:
            parts.append(f"ops of step {self.profile_step} (under minigrad.profile; data-parallel slices of this step "
                         "run one after another in this process)")
            parts.append(self.op_profile.table(top=top))
        else:
            parts.append(f"(no op profile: the run ended before step {self.profile_step})")
        parts.append(self.report(tokens_per_step, peak, note))
        if self.op_profile is None:
            parts.append(f"matmul peak of this machine: {peak / 1e9:.1f} GFLOP/s {note}")
        return "\n".join(parts)

    def _now(self):
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        if name == "data" and self._cur is None:    # a new step
            self._n += 1
            self._cur = {}
            if self._n == self.profile_step:
                self._prof = profile().__enter__()
        region = self._prof.region(name) if self._prof is not None and name in ("data", "optimizer") \
            else contextlib.nullcontext()
        t0 = self._now()
        if self.t_first is None:
            self.t_first = t0
        try:
            with region:
                yield
        except BaseException:
            if self._prof is not None:          # never leave the hook installed behind an error
                self._prof.__exit__(None, None, None)
                self._prof = None
            raise
        finally:
            dt = self._now() - t0
            self.totals[name] = self.totals.get(name, 0.0) + dt
            self.counts[name] = self.counts.get(name, 0) + 1
            if self._cur is not None and name in self.STEP_PHASES:
                self._cur[name] = self._cur.get(name, 0.0) + dt
            if name == "optimizer" and self._cur is not None:
                if self._prof is not None:
                    self._prof.__exit__(None, None, None)
                    self.op_profile, self._prof = self._prof, None
                    self.profiled_step_s = sum(self._cur.values())
                    for k, v in self._cur.items():       # keep the profiled step out of the totals
                        self.totals[k] -= v
                        self.counts[k] -= 1
                else:
                    self.steps.append(self._cur)
                self._cur = None

    def report(self, tokens_per_step: int | None = None, peak_flops: float | None = None,
               peak_note: str = "", wall: float | None = None) -> str:
        """Phase breakdown, tokens/s and achieved FLOP/s (from the profiled step's estimate)."""
        if not self.steps:
            return "profile: no complete training step was timed"
        wall = wall if wall is not None else (time.perf_counter() - self.t_first)
        step_s = np.array([sum(s.values()) for s in self.steps])
        med = float(np.median(step_s))
        lines = [(f"phase breakdown: {len(self.steps)} steps (the profiled step excluded), "
                  f"{wall:.2f} s wall"), f"  {'phase':<16} {'total s':>9} {'calls':>6} {'mean ms':>9} {'share':>6}"]
        named = ("data", "forward", "backward", "forward+backward", "optimizer", "eval")
        accounted = 0.0
        for name in list(named) + sorted(set(self.totals) - set(named)):
            if name not in self.totals or self.counts.get(name, 0) == 0:
                continue
            t, c = self.totals[name], self.counts[name]
            accounted += t
            lines.append(f"  {name:<16} {t:>9.3f} {c:>6} {t / c * 1e3:>9.2f} {t / wall * 100:>5.1f}%")
        other = max(wall - accounted - self.profiled_step_s, 0.0)
        lines.append(f"  {'other':<16} {other:>9.3f} {'':>6} {'':>9} {other / wall * 100:>5.1f}%"
                     "   (logging, progress bar, checkpoints, the profiled step)")
        lines.append(f"median step {med * 1e3:.2f} ms (data + forward and backward + optimizer)")
        if tokens_per_step:
            lines.append(f"tokens/s: {tokens_per_step / med:,.0f} (median step), "
                         f"{tokens_per_step * len(step_s) / step_s.sum():,.0f} (mean over the run)")
        if self.op_profile is not None:
            flops = sum(r["flops"] or 0 for r in self.op_profile.key_averages())
            achieved = flops / med
            line = f"achieved {achieved / 1e9:.2f} GFLOP/s ({flops / 1e9:.3f} GFLOP per step, estimated by the op profiler)"
            if peak_flops:
                line += f" = {achieved / peak_flops * 100:.1f}% of the matmul peak {peak_flops / 1e9:.1f} GFLOP/s {peak_note}"
            lines.append(line)
        return "\n".join(lines)


def matmul_peak(n: int = 1024, dtype=np.float32, reps: int = 10, xp=None) -> tuple[float, str]:
    """(FLOP/s, description): the best of ``reps`` n×n×n products of random matrices, after one
    untimed product. With ``xp`` = cupy it times on the GPU (with a synchronize)."""
    xp = xp or np
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    b = xp.asarray(rng.standard_normal((n, n)).astype(dtype))
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else (lambda: None)
    c = a @ b
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        c = a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    del c
    flops = 2.0 * n ** 3 / best
    return flops, f"({xp.__name__} {np.dtype(dtype).name} {n}x{n} GEMM, best of {reps})"


# ---------------------------------------------------------------- generation timing
class TokenTimer:
    """Call it once per generated token (it fits ``generate``'s ``on_token``). The first interval
    (start to first token) is the prefill: the prompt's forward plus one sample. The rest are
    decode steps; with a KV cache, a step whose context exceeds ``window`` re-reads the window
    (a re-prefill) and is reported apart."""

    def __init__(self, prompt_tokens: int, window: int | None = None, cached: bool = True, sync=None,
                 on_token=None):
        self.prompt_tokens, self.window, self.cached = prompt_tokens, window, cached
        self.sync, self.on_token = sync, on_token
        self.times: list[float] = []
        self.t_start = time.perf_counter()

    def __call__(self, token=None):
        if self.sync is not None:
            self.sync()
        self.times.append(time.perf_counter())
        if self.on_token is not None:
            self.on_token(token)

    def report(self) -> str:
        if not self.times:
            return "profile: no token was generated"
        prefill = self.times[0] - self.t_start
        lines = [(f"prefill: {prefill * 1e3:.2f} ms for a {self.prompt_tokens}-token prompt "
                  f"({'KV cache' if self.cached else 'no cache'}), first token included")]
        gaps = np.diff(self.times)
        # gaps[i] produced token i+1, whose forward read a context of prompt + i + 1 tokens
        ctx = self.prompt_tokens + 1 + np.arange(len(gaps))
        refill = (ctx > (self.window or np.inf)) if self.cached else np.zeros(len(gaps), bool)
        for label, sel in (("decode", ~refill), ("decode past the window (cache refilled)", refill)):
            g = gaps[sel]
            if g.size:
                lines.append(f"{label}: {g.size} tokens, median {np.median(g) * 1e3:.2f} ms/token, "
                             f"p90 {np.percentile(g, 90) * 1e3:.2f} ms, max {g.max() * 1e3:.2f} ms "
                             f"({1 / np.median(g):,.1f} tokens/s)")
        total = self.times[-1] - self.t_start
        lines.append(f"total: {len(self.times)} tokens in {total:.3f} s ({len(self.times) / total:,.1f} tokens/s overall)")
        return "\n".join(lines)
