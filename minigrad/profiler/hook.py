"""The profiler's hook and its table: ``profile`` records every op's forward and backward.

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

FLOPs and bytes come from ``flops.estimate`` (shapes only); ops without an estimate show "-".
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import numpy as np

from .. import autograd
from .flops import estimate

__all__ = ["hook_overhead", "profile"]


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
    from ..ops.elementwise import Neg
    from ..tensor import Tensor
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
