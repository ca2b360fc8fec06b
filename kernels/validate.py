"""`minigrad kernels validate`: every registered kernel against its NumPy reference.

Runs each operation's validate cases on the CPU emulator (numpy inputs) and, when CuPy sees a GPU,
on the device (cupy inputs). The reference is evaluated in float64 on the same inputs; the error
of an output is max |out - ref| (abs) and that divided by max |ref| (rel). A case fails when rel
exceeds the operation's tolerance for the dtype (1e-5 for float32, 1e-12 for float64 by default; the
half-precision versions derive theirs per case from an elementwise error bound, see
kernels/attention.py and kernels/layernorm.py). Half-precision inputs are made on the host (bfloat16
as ml_dtypes.bfloat16 when installed, else uint16 bits) and go to CuPy as uint16 bits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from minigrad.kernels import dtypes as kdt
from minigrad.kernels.family import select, tolerance


@dataclasses.dataclass
class Result:
    kernel: str
    device: str
    dtype: str
    case: str
    output: str
    max_abs: float
    max_rel: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(self.max_rel <= self.tol)


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except (ImportError, OSError, RuntimeError):  # no cupy, no driver, no device
        return False


def _to_numpy(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _errors(out, ref):
    out = kdt.to_float64(_to_numpy(out))
    ref = kdt.to_float64(_to_numpy(ref))
    if out.shape != ref.shape:
        return float("inf"), float("inf")
    if out.size == 0:
        return 0.0, 0.0
    abs_err = float(np.max(np.abs(out - ref)))
    scale = float(np.max(np.abs(ref)))
    rel = abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))
    if not np.all(np.isfinite(out)):
        abs_err = rel = float("inf")
    return abs_err, rel


def validate(names=None, devices=None, seed=0, versions=None, dtypes=None):
    """List of Result for the kernels `names` selects (family.select; all when None), in every dtype
    each takes (or those of `dtypes` it takes), only `versions` when given."""
    from minigrad.kernels import registry

    if devices is None:
        devices = ["emulator"] + (["gpu"] if gpu_available() else [])
    only = None if dtypes is None else [np.dtype(d) for d in dtypes]
    results = []
    for k in select(registry.KERNELS, names):
        if versions and k.version not in versions:
            continue
        op = k.op
        for device in devices:
            if device == "gpu":
                import cupy as xp
            else:
                xp = np
            for dtype in op.dtypes:
                dt = np.dtype(dtype)
                if only is not None and dt not in only:
                    continue
                for case in op.cases:
                    rng = np.random.default_rng(seed)
                    inputs = op.make_inputs(np, rng, case, dt)
                    ref_in = {key: (kdt.to_float64(v) if isinstance(v, np.ndarray) else v)
                              for key, v in inputs.items()}
                    run_in = {key: kdt.to_device(xp, v) for key, v in inputs.items()}
                    out = op.run(k, run_in)
                    ref = {key: r for key, r in op.reference(ref_in).items() if r is not None}
                    tols = tolerance(op, dt, ref_in, ref)
                    for key, r in ref.items():
                        a, rel = _errors(out.get(key), r) if out.get(key) is not None else (float("inf"),) * 2
                        results.append(Result(k.name, device, kdt.name(dt), op.describe(case), key, a, rel,
                                              tols[key]))
    return results


def format_results(results) -> str:
    head = ("kernel", "device", "dtype", "case", "output", "max abs", "max rel", "tol", "")
    rows = [(r.kernel, r.device, r.dtype, r.case, r.output, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}",
             f"{r.tol:.1e}", "ok" if r.ok else "FAIL") for r in results]
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in rows]
    bad = sum(not r.ok for r in results)
    lines.append(f"{len(results) - bad}/{len(results)} outputs within tolerance" + (f"; {bad} FAILED" if bad else ""))
    return "\n".join(lines)
