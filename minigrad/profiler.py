"""Where the time goes: an op-level profiler, phase timers, a GEMM peak probe, a token timer.

    with minigrad.profile() as prof:
        loss = model(x, y)[1]
        loss.backward()
        with prof.region("optimizer"):      # work that is not an op
            opt.step()
    print(prof.table(top=15))
    prof.export_chrome_trace("trace.json")   # open in https://ui.perfetto.dev or chrome://tracing

How ops are timed. While a profile is active, ``minigrad.autograd._profiler`` is the profile:
``Function.apply`` brackets each op's forward with ``clock()`` and calls ``record(..., "forward",
...)``; the backward engine does the same around each op's backward. A backward is written in
Tensor ops, so its record arrives after the records of the ops it ran inside. Those nested
records are folded into it: the table's "MatMul backward" row is the whole backward of MatMul
(its inner matmuls included), each nested op is counted once, inside its parent, and the rows
of the table add up without double counting. The nested ops still appear in the Chrome trace,
drawn inside their parent.

The backward engine's own array work is recorded too, as "AccumulateGrad": summing the gradients
of a tensor used twice, and writing the leaves' ``.grad`` at the end (what the engine does
between ops that is not an op).

Regions (``prof.region(name)``) time work that is not an op (an optimizer step, a data batch).
A region's row is its *self* time: its duration minus the ops and inner regions run inside it.

On a GPU, op durations come from CUDA events recorded on the current stream around each op
(host clocks only see the launch); the host clock still orders and nests the records.

FLOPs and bytes are estimates from shapes (see ``estimate``): matmul 2·M·N·K per product, the
attention forward 2·Tq·Tk·(d + dv) plus the softmax, elementwise ops a nominal count per output
element (a transcendental counts as one), bytes as each input read once and each output written
once (plus the (Tq, Tk) probabilities that the NumPy attention materialises). Ops without an
estimate (views, indexing) show "-".
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time

import numpy as np

from . import autograd

__all__ = ["PhaseTimer", "TokenTimer", "estimate", "hook_overhead", "matmul_peak", "profile"]


# ---------------------------------------------------------------- clocks
def _cuda_visible() -> bool:
    """True when CuPy is already imported and sees a device (tensors on "cuda" imply both)."""
    cp = sys.modules.get("cupy")
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:   # noqa: BLE001  (any CUDA runtime failure means: no usable GPU)
        return False


def _cuda_clock():
    """(host time, CUDA event recorded on the current stream)."""
    import cupy
    ev = cupy.cuda.Event()
    ev.record()
    return time.perf_counter(), ev


def _cuda_ms(e0, e1) -> float:
    import cupy
    return float(cupy.cuda.get_elapsed_time(e0, e1))


# ---------------------------------------------------------------- FLOP and byte estimates
# nominal floating-point operations per output element, forward; backward costs one more per
# input that needs a gradient (the chain-rule multiply) on top of the derivative itself.
_EW_FLOPS = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Neg": 1, "PowScalar": 1, "Pow": 1, "Exp": 1, "Log": 1,
    "Sqrt": 1, "Tanh": 1, "Sigmoid": 3, "Relu": 1, "Abs": 1, "Clip": 2, "Maximum": 1, "Minimum": 1,
    "Where": 1, "Compare": 1, "AsType": 0, "Erf": 1, "Gelu": 8,
}
_ROWWISE_FLOPS = {"Softmax": 5, "LogSoftmax": 5, "LogSumExp": 4, "CrossEntropy": 5}
_REDUCE = {"Sum", "Mean", "Max", "SumTo"}
_COPY = {"GetItem", "Concatenate", "ToDevice", "IndexAdd"}


def _size(shape) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _batch(*lead_shapes) -> int:
    try:
        return _size(np.broadcast_shapes(*lead_shapes))
    except ValueError:
        return _size(lead_shapes[0])


def estimate(name: str, phase: str, in_shapes, out_shape, itemsize: int, needs=None, kernel=False):
    """(flops, bytes) for one call of op ``name`` in ``phase`` ("forward" or "backward"), or
    (None, None) when there is no estimate. ``in_shapes``: the inputs' shapes; ``out_shape``: the
    forward output's shape (None if unknown); ``needs``: per input, whether backward computes
    its gradient (default: all); ``kernel``: the op ran the fused kernel (no (Tq, Tk) buffer in
    memory; the backward recomputes the scores)."""
    if name == "AccumulateGrad":                # the engine's gradient sums: g_total += g
        if not in_shapes:
            return None, None
        n = _size(in_shapes[0])
        return n, 3 * n * itemsize
    fwd = phase == "forward"
    n_in = len(in_shapes)
    needs = tuple(needs) if needs is not None else (True,) * n_in
    ins = [_size(s) for s in in_shapes]
    if name == "MatMul":
        a, b = in_shapes
        a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
        b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
        m, k, n = a2[-2], a2[-1], b2[-1]
        one = 2 * _batch(a2[:-2], b2[:-2]) * m * n * k
        out = _size(out_shape) if out_shape is not None else _batch(a2[:-2], b2[:-2]) * m * n
        if fwd:
            return one, (ins[0] + ins[1] + out) * itemsize
        # da = g bᵀ reads g and b, writes da; db = aᵀ g reads a and g, writes db
        flops = one * (int(needs[0]) + int(needs[1]))
        by = (needs[0] * (out + 2 * ins[0] + ins[1]) + needs[1] * (out + 2 * ins[1] + ins[0])) * itemsize
        return flops, by
    if name == "Linear":                        # y = x Wᵀ (+ b): x (…, in), W (out, in)
        x, w = in_shapes[0], in_shapes[1]
        rows, n_out = ins[0] // max(x[-1], 1), w[0]
        one = 2 * rows * x[-1] * n_out
        out = rows * n_out
        if fwd:
            return one + (out if n_in == 3 else 0), (ins[0] + ins[1] + out + (n_out if n_in == 3 else 0)) * itemsize
        # dx = g W and dW = gᵀ x (each one GEMM), db = Σ g
        flops = one * (int(needs[0]) + int(needs[1])) + (out if n_in == 3 and needs[2] else 0)
        by = (needs[0] * (out + ins[1] + ins[0]) + needs[1] * (out + ins[0] + ins[1])) * itemsize
        return flops, by
    if name == "Attention":
        q, k, v = in_shapes[:3]
        tq, d, tk, dv = q[-2], q[-1], k[-2], v[-1]
        bh = _batch(q[:-2], k[:-2])
        scores = bh * tq * tk
        io = (ins[0] + ins[1] + ins[2] + bh * tq * dv) * itemsize
        if fwd:
            return 2 * scores * (d + dv) + 5 * scores, io + (0 if kernel else 2 * scores * itemsize)
        flops = 2 * scores * (d + dv) * 2 + 4 * scores
        if kernel:
            flops += 2 * scores * d + 5 * scores
        return flops, 2 * io + (0 if kernel else 4 * scores * itemsize)
    if name == "GeluMLP":                       # x (N, C), W1 (H, C), W2 (C2, H): two GEMMs and a GELU
        (n, c), (h, _), (c2, _) = in_shapes[0], in_shapes[1], in_shapes[2]
        gemms = 2 * n * h * (c + c2)
        if fwd:                                 # writes a and the slope (N, H) and y
            return gemms + 20 * n * h, (ins[0] + ins[1] + ins[2] + 2 * n * h + n * c2) * itemsize
        # dA = g W2, dW2 = gᵀ a, dH = dA·slope, dx = dH W1, dW1 = dHᵀ x
        return 2 * gemms + n * h, (2 * ins[0] + 2 * ins[1] + 2 * ins[2] + 3 * n * h + 2 * n * c2) * itemsize
    if name == "QKVAttention":                  # qkv (B, T, 3C) -> (B, T, C), fused: no (T, T) buffer kept
        b, t, c = in_shapes[0][0], in_shapes[0][1], in_shapes[0][2] // 3
        gemm = 2 * b * t * t * c                # one (T, T)·(T, hs) product summed over the heads
        if fwd:                                 # S = Q Kᵀ, O = P V (the softmax's few FLOPs per score left out)
            return 2 * gemm, (ins[0] + b * t * c) * itemsize
        # S recomputed, dP = dO Vᵀ, dQ, dK, dV; reads qkv, y, dy, writes dqkv
        return 5 * gemm, (2 * ins[0] + 2 * b * t * c) * itemsize
    if name == "LayerNorm":
        x = ins[0]
        c = in_shapes[0][-1] if in_shapes[0] else 1
        if fwd:
            return 7 * x, ((2 if kernel else 3) * x + (n_in - 1) * c) * itemsize
        return 10 * x, (3 * x + 2 * (n_in - 1) * c) * itemsize
    out = _size(out_shape) if out_shape is not None else None
    if name in _EW_FLOPS:
        if out is None:
            out = _batch(*in_shapes) if in_shapes else 0
        per = _EW_FLOPS[name]
        if fwd:
            return per * out, (sum(ins) + out) * itemsize
        k = sum(needs)
        return (per + 1) * out * k, (out + sum(ins) + sum(s for s, nd in zip(ins, needs) if nd)) * itemsize
    if name in _ROWWISE_FLOPS:
        x = ins[0]
        if fwd:
            return _ROWWISE_FLOPS[name] * x, (x + (out or 0)) * itemsize
        return 4 * x, 3 * x * itemsize
    if name in _REDUCE:
        x = ins[0]
        if fwd:
            return x, (x + (out or 0)) * itemsize
        return x, (x + (out or 0)) * itemsize
    if name in _COPY and out is not None:
        return (out if name == "IndexAdd" else 0), 2 * out * itemsize
    return None, None


# ---------------------------------------------------------------- the profile
class _Event:
    __slots__ = (
        "dtype",
        "ev0",
        "ev1",
        "itemsize",
        "kernel",
        "name",
        "needs",
        "out_shape",
        "phase",
        "self_s",
        "shapes",
        "t0",
        "t1",
        "top",
    )

    def __init__(self, name, phase, t0, t1):
        self.name, self.phase, self.t0, self.t1 = name, phase, t0, t1
        self.top = True
        self.self_s = None
        self.shapes = self.out_shape = self.dtype = self.needs = self.ev0 = self.ev1 = None
        self.itemsize, self.kernel = 0, False


class profile:
    """Context manager recording every op's forward and backward (see the module docstring).

    ``use_cuda``: time with CUDA events; default: when CuPy is imported and sees a GPU.
    After the block: ``table()``, ``key_averages()``, ``export_chrome_trace(path)``,
    ``wall_time`` / ``op_time`` / ``total_time`` (seconds), ``coverage`` (total_time / wall_time).
    """

    def __init__(self, use_cuda: bool | None = None):
        self.use_cuda = _cuda_visible() if use_cuda is None else bool(use_cuda)
        self.clock = _cuda_clock if self.use_cuda else time.perf_counter
        self.events: list[_Event] = []
        self._top: list[_Event] = []
        self._start = self._end = None
        self._rows = None

    # ---- the hook called by minigrad.autograd
    def record(self, name, phase, t0, t1, fn, inputs, out):
        ev = _Event(name, phase, t0, t1)
        if self.use_cuda:
            (ev.t0, ev.ev0), (ev.t1, ev.ev1) = t0, t1
        if inputs is not None:                  # forward: shapes from the arrays
            ev.shapes = tuple(a.shape for a in inputs)
            ev.out_shape, ev.dtype = out.shape, out.dtype
            if fn is not None:
                fn._prof_out = (out.shape, out.dtype)   # for this op's backward record
        else:                                   # backward: the op's input Tensors are still there
            ins = (fn.inputs or ()) if fn is not None else ()
            ev.shapes = tuple(t.shape for t in ins)
            ev.needs = tuple(t.requires_grad for t in ins)
            ev.out_shape, ev.dtype = getattr(fn, "_prof_out", (None, ins[0].dtype if ins else None))
        ev.itemsize = ev.dtype.itemsize if ev.dtype is not None else 0
        ev.kernel = bool(getattr(fn, "kernel", False))
        # records that started inside this op ran inside it (a backward's Tensor ops): fold them in
        top, start = self._top, ev.t0
        while top and top[-1].t0 >= start:
            top.pop().top = False
        top.append(ev)
        self.events.append(ev)

    # ---- entering and leaving
    def __enter__(self):
        if autograd._profiler is not None:
            raise RuntimeError("minigrad.profile: another profile is already active; profiles do not nest")
        self._start = self.clock()
        autograd._profiler = self
        return self

    def __exit__(self, *exc):
        autograd._profiler = None
        self._end = self.clock()
        if self.use_cuda:
            self._end[1].synchronize()
        self._rows = None
        return False

    @contextlib.contextmanager
    def region(self, name: str):
        """Time a piece of non-op work; its row is its self time (ops inside keep their own rows)."""
        t0 = self.clock()
        try:
            yield
        finally:
            t1 = self.clock()
            ev = _Event(name, "region", t0, t1)
            if self.use_cuda:
                (ev.t0, ev.ev0), (ev.t1, ev.ev1) = t0, t1
            inner = 0.0
            for e in reversed(self._top):       # top-level records that started inside the region
                if e.t0 < ev.t0:
                    break
                inner += self._self_seconds(e)
            ev.self_s = max(self._dur(ev) - inner, 0.0)
            self._top.append(ev)
            self.events.append(ev)

    # ---- durations
    def _host(self, t):
        return t[0] if self.use_cuda else t

    def _dur(self, ev) -> float:
        """Seconds: CUDA-event time on a GPU, host time otherwise."""
        if self.use_cuda:
            ev.ev1.synchronize()
            return _cuda_ms(ev.ev0, ev.ev1) / 1e3
        return ev.t1 - ev.t0

    def _self_seconds(self, ev) -> float:
        return ev.self_s if ev.self_s is not None else self._dur(ev)

    def _check_done(self):
        if self._start is None:
            raise RuntimeError("minigrad.profile: nothing recorded yet; use it as `with minigrad.profile() as prof:`")
        if self._end is None:
            raise RuntimeError("minigrad.profile: read the results after the `with` block ends")

    @property
    def wall_time(self) -> float:
        """Seconds from entering to leaving the profile."""
        self._check_done()
        if self.use_cuda:
            return _cuda_ms(self._start[1], self._end[1]) / 1e3
        return self._end - self._start

    @property
    def op_time(self) -> float:
        """Seconds inside ops (forward and backward, nested ops counted once)."""
        return sum(r["total_s"] for r in self.key_averages() if r["phase"] != "region")

    @property
    def total_time(self) -> float:
        """Seconds accounted for: ops plus region self times."""
        return sum(r["total_s"] for r in self.key_averages())

    @property
    def coverage(self) -> float:
        return self.total_time / self.wall_time if self.wall_time > 0 else 0.0

    # ---- summaries
    def key_averages(self) -> list[dict]:
        """One dict per (op, phase): name, phase, calls, total_s, mean_s, share, flops, bytes
        (flops/bytes None when the op has no estimate), nested (ops run inside these calls)."""
        self._check_done()
        if self._rows is not None:
            return self._rows
        rows: dict = {}
        nested: dict = {}
        for ev in self.events:
            if not ev.top:
                nested[(ev.name, ev.phase)] = nested.get((ev.name, ev.phase), 0) + 1
                continue
            r = rows.get((ev.name, ev.phase))
            if r is None:
                r = rows[(ev.name, ev.phase)] = {"name": ev.name, "phase": ev.phase, "calls": 0, "total_s": 0.0,
                                                 "flops": 0, "bytes": 0, "shapes": ev.shapes}
            r["calls"] += 1
            r["total_s"] += self._self_seconds(ev)
            if ev.phase == "region":
                r["flops"] = r["bytes"] = None
                continue
            f, b = estimate(ev.name, ev.phase, ev.shapes, ev.out_shape, ev.itemsize, ev.needs, ev.kernel)
            if f is None or r["flops"] is None:
                r["flops"] = r["bytes"] = None
            else:
                r["flops"] += f
                r["bytes"] += b
        total = sum(r["total_s"] for r in rows.values()) or 1.0
        out = []
        for r in rows.values():
            r["mean_s"] = r["total_s"] / r["calls"]
            r["share"] = r["total_s"] / total
            out.append(r)
        self._rows = out
        self.nested_calls = sum(nested.values())
        return out

    def table(self, sort_by: str = "total", top: int | None = None) -> str:
        """A printable table, one row per (op, phase), then totals, coverage of the wall time and
        the profiler's own overhead. sort_by: total, calls, mean, flops, bytes, name."""
        keys = {"total": lambda r: -r["total_s"], "calls": lambda r: -r["calls"], "mean": lambda r: -r["mean_s"],
                "flops": lambda r: -(r["flops"] or 0), "bytes": lambda r: -(r["bytes"] or 0),
                "name": lambda r: (r["name"], r["phase"])}
        if sort_by not in keys:
            raise ValueError(f"table(sort_by={sort_by!r}): choose one of {', '.join(keys)}")
        if top is not None and (not isinstance(top, int) or top < 1):
            raise ValueError(f"table(top={top!r}): expected a positive integer or None")
        rows = sorted(self.key_averages(), key=keys[sort_by])
        shown = rows[:top] if top else rows
        head = f"{'op':<16} {'phase':<8} {'calls':>6} {'total ms':>9} {'mean µs':>9} {'share':>6} " \
               f"{'GFLOP':>8} {'GFLOP/s':>8} {'MB':>8} {'GB/s':>7}"
        lines = [head, "-" * len(head)]
        for r in shown:
            t = r["total_s"]
            fl, by = r["flops"], r["bytes"]
            lines.append(
                f"{r['name'][:16]:<16} {r['phase']:<8} {r['calls']:>6} {t * 1e3:>9.3f} {r['mean_s'] * 1e6:>9.1f} "
                f"{r['share'] * 100:>5.1f}% "
                + (f"{fl / 1e9:>8.4f} {fl / t / 1e9 if t > 0 else 0:>8.2f} {by / 1e6:>8.2f} "
                   f"{by / t / 1e9 if t > 0 else 0:>7.2f}" if fl is not None else f"{'-':>8} {'-':>8} {'-':>8} {'-':>7}"))
        if len(shown) < len(rows):
            rest = rows[len(shown):]
            lines.append(f"... {len(rest)} more rows, {sum(r['total_s'] for r in rest) * 1e3:.3f} ms")
        lines.append("-" * len(head))
        wall, ops, tot = self.wall_time, self.op_time, self.total_time
        flops = sum(r["flops"] or 0 for r in rows)
        n_rec = len(self.events)
        lines.append(f"ops {ops * 1e3:.3f} ms + regions {(tot - ops) * 1e3:.3f} ms = {tot * 1e3:.3f} ms of "
                     f"{wall * 1e3:.3f} ms wall ({tot / wall * 100 if wall else 0:.1f}%); "
                     f"{n_rec} records, {self.nested_calls} of them nested inside a backward")
        lines.append(f"estimated {flops / 1e9:.4f} GFLOP, {flops / wall / 1e9 if wall else 0:.2f} GFLOP/s over the wall time"
                     + ("; times from CUDA events" if self.use_cuda else "; times from the host clock"))
        per = hook_overhead()
        lines.append(f"profiler overhead: about {per * 1e6:.2f} µs per record (measured on an empty op) x {n_rec} "
                     f"records = {per * n_rec * 1e3:.2f} ms ({per * n_rec / wall * 100 if wall else 0:.1f}% of the wall time)")
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def export_chrome_trace(self, path) -> str:
        """Write Chrome trace-event JSON (complete "X" events, µs) for Perfetto / chrome://tracing."""
        self._check_done()
        pid = os.getpid()
        start = self._host(self._start)
        meta = [{"ph": "M", "pid": pid, "name": "process_name", "args": {"name": "minigrad"}},
                {"ph": "M", "pid": pid, "tid": 1, "name": "thread_name", "args": {"name": "ops (host clock)"}}]
        evs = []
        for ev in self.events:
            args = {"phase": ev.phase}
            if ev.shapes is not None:
                args["input_shapes"] = [list(s) for s in ev.shapes]
            if ev.out_shape is not None:
                args["output_shape"] = list(ev.out_shape)
            if ev.dtype is not None:
                args["dtype"] = str(ev.dtype)
            if ev.phase != "region":
                f, b = estimate(ev.name, ev.phase, ev.shapes, ev.out_shape, ev.itemsize, ev.needs, ev.kernel)
                if f is not None:
                    args["flops"], args["bytes"] = int(f), int(b)
            t0, t1 = self._host(ev.t0), self._host(ev.t1)
            label = ev.name if ev.phase == "region" else f"{ev.name} {ev.phase}"
            evs.append({"name": label, "cat": ev.phase, "ph": "X", "pid": pid, "tid": 1,
                        "ts": round((t0 - start) * 1e6, 3), "dur": round((t1 - t0) * 1e6, 3), "args": args})
            if self.use_cuda:                   # the device timeline, from the events
                evs.append({"name": label, "cat": ev.phase, "ph": "X", "pid": pid, "tid": 2,
                            "ts": round(_cuda_ms(self._start[1], ev.ev0) * 1e3, 3),
                            "dur": round(_cuda_ms(ev.ev0, ev.ev1) * 1e3, 3), "args": args})
        if self.use_cuda:
            meta.append({"ph": "M", "pid": pid, "tid": 2, "name": "thread_name",
                         "args": {"name": "cuda stream (CUDA events)"}})
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"traceEvents": meta + evs, "displayTimeUnit": "ms"}, f)
        os.replace(tmp, path)
        return path


# ---------------------------------------------------------------- overhead of the hook
_OVERHEAD = None


def hook_overhead(n: int = 3000) -> float:
    """Seconds the profiler adds to one op call (clock twice + record), measured once per
    process on a 1-element Neg as the best of 5 rounds with and without the hook."""
    global _OVERHEAD
    if _OVERHEAD is not None:
        return _OVERHEAD
    from .ops.elementwise import Neg
    from .tensor import Tensor
    x = Tensor(np.ones(1, np.float32))
    saved = autograd._profiler

    def run(prof):
        autograd._profiler = prof
        t0 = time.perf_counter()
        for _ in range(n):
            Neg.apply(x)
        return time.perf_counter() - t0

    try:
        off, on = [], []
        for _ in range(5):
            off.append(run(None))
            on.append(run(profile(use_cuda=False)))
    finally:
        autograd._profiler = saved
    _OVERHEAD = max(min(on) - min(off), 0.0) / n
    return _OVERHEAD


# ---------------------------------------------------------------- phase timing
class PhaseTimer:
    """``with timer.phase(name):`` sums wall time per phase: the hook `models.train.Trainer` calls
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
