"""`minigrad gradcheck`: every op in the registry, forward vs NumPy, gradcheck, gradgradcheck.

The sweep runs in float64 at float64's own tolerances (OpInfo.tolerances: the central-difference
error bound of gradient_check.float64_tolerances, about 2e-9 for outputs of order one), not at the
public gradcheck's defaults (PyTorch's atol 1e-5, rtol 1e-3), which a derivative off in its fifth
digit passes."""
from __future__ import annotations

import time

import numpy as np

from .gradient_check import GradcheckError, gradcheck, gradgradcheck
from .opinfo import OPS, OpInfo
from .tensor import Tensor

EPS64 = float(np.finfo(np.float64).eps)
FWD_RTOL = 1e3 * EPS64   # the forward matches NumPy to a few hundred ulps in float64


def jacobian_errors(op: OpInfo, arrays):
    """Max abs and rel difference between the analytic and numeric Jacobians (for the table)."""
    from .gradient_check import _jacobians
    ts = [Tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    diff = [j for j, t in enumerate(ts) if t.requires_grad]
    out = op.fn(*ts)
    a, n = _jacobians(op.fn, ts, diff, 0, out.size, 1e-6)
    abs_err = max((float(np.abs(x - y).max()) if x.size else 0.0) for x, y in zip(a, n))
    rel_err = max((float((np.abs(x - y) / np.maximum(np.abs(y), 1e-8)).max()) if x.size else 0.0)
                  for x, y in zip(a, n))
    return abs_err, rel_err


def check_op(op: OpInfo, second_order=True, seed=0):
    """Run the three checks; returns (ok, message, abs_err, rel_err)."""
    rng = np.random.default_rng(seed)
    arrays = op.inputs(rng)
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    got = op.fn(*ts).numpy()
    want = op.ref(*arrays)
    if got.shape != np.shape(want) or not np.allclose(got, want, rtol=FWD_RTOL, atol=FWD_RTOL):
        return False, f"forward differs from NumPy (max |diff| {np.abs(got - want).max():.3g})", np.nan, np.nan
    try:
        gradcheck(op.fn, ts, **op.tolerances(ts))
        if second_order and op.second_order:
            gradgradcheck(op.fn, ts, **op.tolerances(ts, order=2))
    except GradcheckError as e:
        return False, str(e).splitlines()[0], np.nan, np.nan
    abs_err, rel_err = jacobian_errors(op, arrays)
    return True, "", abs_err, rel_err


def main(args) -> int:
    ops = [o for o in OPS if not args.op or o.name in args.op]
    unknown = set(args.op or ()) - {o.name for o in OPS}
    if unknown:
        print(f"minigrad gradcheck: error: unknown op(s) {', '.join(sorted(unknown))}; "
              f"known: {', '.join(o.name for o in OPS)}")
        return 2
    print(f"{'op':<26} {'shapes':<34} {'max abs err':>12} {'max rel err':>12}  order  pass")
    failures = 0
    t0 = time.perf_counter()
    for op in ops:
        ok, msg, ae, re = check_op(op, second_order=not args.first_order_only)
        order = "1" if args.first_order_only or not op.second_order else "1+2"
        shapes = " ".join("x".join(map(str, s)) or "()" for s in op.shapes)
        print(f"{op.name:<26} {shapes:<34} {ae:>12.2e} {re:>12.2e}  {order:<5}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures += 1
            print(f"    {msg}")
    print(f"{len(ops) - failures} passed, {failures} failed ({time.perf_counter() - t0:.1f} s)")
    return 1 if failures else 0
