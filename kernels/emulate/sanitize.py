"""`minigrad kernels sanitize`: the shipped kernels on the CPU emulator under every schedule, checked.

For every registered kernel and every schedule (forward, reverse, and random:SEED per seed) the
kernel's validate cases run, both dtypes, with racecheck, memcheck and initcheck on (see
cuda_emu.h), and every output is compared with the NumPy reference as `minigrad kernels validate`
does. One row per (kernel, schedule): outputs within tolerance, the error class if a check fired,
seconds. Exit status 1 on any error or out-of-tolerance output.

--slowdown times the same cases with the checks off and on, alternating, in one process: the
median of --repeat runs per case and mode, summed per kernel, and their ratio.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np
from minigrad.kernels import dtypes
from minigrad.kernels.emulate.errors import KernelError
from minigrad.kernels.emulate.module import parse_schedule, settings

DEFAULT_SCHEDULES = ("forward", "reverse", "random:0", "random:1")


def _operation(kernel):
    """The kernel's validate/bench description (registry Kernel.family, or .op in newer layouts)."""
    return getattr(kernel, "op", None) or kernel.family


def _kernels(names=None):
    from minigrad.kernels import registry
    from minigrad.kernels.family import select

    return select(registry.KERNELS, names)


def _float64_inputs(inputs):
    return {k: (dtypes.to_float64(v) if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def _tolerances(op, dt, ref_in, ref):
    from minigrad.kernels.family import tolerance

    return tolerance(op, dt, ref_in, {k: r for k, r in ref.items() if r is not None})


def _cases(kernel, seed=0):
    """(label, inputs, float64 inputs) for every dtype and validate case of the kernel."""
    op = _operation(kernel)
    for dtype in op.dtypes:
        dt = np.dtype(dtype)
        for case in op.cases:
            inputs = op.make_inputs(np, np.random.default_rng(seed), case, dt)
            yield f"{dtypes.name(dt)} {op.describe(case)}", dt, inputs, _float64_inputs(inputs)


def _rel_error(out, ref) -> float:
    if out is None:
        return float("inf")
    out, ref = dtypes.to_float64(np.asarray(out)), np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return float("inf")
    if out.size == 0:
        return 0.0
    err, scale = float(np.max(np.abs(out - ref))), float(np.max(np.abs(ref)))
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def run_case(kernel, case, dtype, seed=0) -> dict:
    """Run one validate-style case of a registered kernel (name or Kernel) under the current settings:
    {output: (relative error vs the float64 reference, tolerance)}."""
    if isinstance(kernel, str):
        kernel = next(k for k in _kernels([kernel]) if k.name == kernel)
    op = _operation(kernel)
    dt = np.dtype(dtype)
    inputs = op.make_inputs(np, np.random.default_rng(seed), case, dt)
    ref_in = _float64_inputs(inputs)
    out = op.run(kernel, inputs)
    refs = {key: r for key, r in op.reference(ref_in).items() if r is not None}
    tols = _tolerances(op, dt, ref_in, refs)
    return {key: (_rel_error(out.get(key), r), tols[key]) for key, r in refs.items()}


@dataclasses.dataclass
class Row:
    kernel: str
    schedule: str
    outputs: int = 0
    within: int = 0
    error: KernelError | None = None
    worst: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.within == self.outputs


def sanitize(names=None, schedules=DEFAULT_SCHEDULES) -> list[Row]:
    """One Row per (kernel, schedule): every validate case run with the checks on."""
    rows = []
    for schedule in [str(parse_schedule(s)) for s in schedules]:
        for k in _kernels(names):
            op = _operation(k)
            row = Row(k.name, schedule)
            t0 = time.perf_counter()
            try:
                for label, dt, inputs, ref_in in _cases(k):
                    with settings(schedule=schedule, check=True):
                        out = op.run(k, inputs)
                    refs = {key: r for key, r in op.reference(ref_in).items() if r is not None}
                    tols = _tolerances(op, dt, ref_in, refs)
                    for key, ref in refs.items():
                        row.outputs += 1
                        rel = _rel_error(out.get(key), ref)
                        if rel <= tols[key]:
                            row.within += 1
                        elif not row.worst:
                            row.worst = f"{label} {key}: rel error {rel:.2e} > {tols[key]:.1e}"
            except KernelError as e:
                row.error = e
            row.seconds = time.perf_counter() - t0
            rows.append(row)
    return rows


def format_rows(rows) -> str:
    head = ("kernel", "schedule", "outputs ok", "checks", "seconds")
    body = [(r.kernel, r.schedule, f"{r.within}/{r.outputs}", type(r.error).__name__ if r.error else "clean",
             f"{r.seconds:.1f}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body]
    for r in rows:
        if r.error:
            lines.append(f"\n{r.kernel} [{r.schedule}]: {type(r.error).__name__}: {r.error}")
        elif r.worst:
            lines.append(f"\n{r.kernel} [{r.schedule}]: {r.outputs - r.within} outputs out of tolerance, "
                         f"first: {r.worst}")
    bad = sum(not r.ok for r in rows)
    lines.append(f"\n{len(rows) - bad}/{len(rows)} (kernel, schedule) runs clean: racecheck, memcheck, initcheck, "
                 f"all outputs within tolerance" + (f"; {bad} FAILED" if bad else ""))
    return "\n".join(lines)


def slowdown(names=None, repeat=7) -> list[tuple]:
    """[(kernel, cases, plain ms, checked ms)]: per case the median of `repeat` runs per mode (forward
    schedule, modes alternating), summed over the kernel's validate cases."""
    out = []
    for k in _kernels(names):
        op = _operation(k)
        plain = checked = 0.0
        n = 0
        for _, _, inputs, _ in _cases(k):
            times = {False: [], True: []}
            for check in (False, True):  # build and warm both libraries first
                with settings(schedule="forward", check=check):
                    op.run(k, inputs)
            for _ in range(repeat):
                for check in (False, True):
                    with settings(schedule="forward", check=check):
                        t0 = time.perf_counter()
                        op.run(k, inputs)
                        times[check].append(time.perf_counter() - t0)
            plain += statistics.median(times[False])
            checked += statistics.median(times[True])
            n += 1
        out.append((k.name, n, 1e3 * plain, 1e3 * checked))
    return out


def format_slowdown(rows) -> str:
    lines = [f"{'kernel':<28}{'cases':>6}{'checks off ms':>15}{'checks on ms':>14}{'slowdown':>10}"]
    for name, n, plain, checked in rows:
        lines.append(f"{name:<28}{n:>6}{plain:>15.1f}{checked:>14.1f}{checked / plain:>9.1f}x")
    tp, tc = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines.append(f"{'all':<28}{sum(r[1] for r in rows):>6}{tp:>15.1f}{tc:>14.1f}{tc / tp:>9.1f}x")
    lines.append("per case: median over the repeats, forward schedule, launcher included (NumPy allocation, "
                 "argument checks)")
    return "\n".join(lines)


def main(names=None, schedules=None, seeds=None, show_slowdown=False, repeat=7) -> int:
    if show_slowdown:
        print(format_slowdown(slowdown(names, repeat=repeat)))
        return 0
    if schedules is None:
        schedules = ["forward", "reverse"] + [f"random:{s}" for s in (seeds if seeds is not None else (0, 1))]
    rows = sanitize(names, schedules)
    if not rows:
        print(f"no registered kernel matches {names!r}")
        return 1
    print(format_rows(rows))
    return 0 if all(r.ok for r in rows) else 1
