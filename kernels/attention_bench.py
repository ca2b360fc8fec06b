"""`minigrad kernels bench attention`: the fused attention kernels against the unfused composition.

For each case (B, H, Tq, Tk, d, is_causal, masked) and dtype (float32, float64) it reports, forward
and forward+backward: time per call, TFLOP/s, % of the device's FMA peak for the dtype (CUDA cores:
the kernels use no tensor cores), the unfused array-library composition (kernels/attention.py's
reference: scores, softmax, P @ V, all materialising (Tq, Tk)), PyTorch's scaled_dot_product_attention
in the same dtype when torch sees the GPU, and the memory a call allocates beyond its inputs.
Timing, input rotation and the poisoned-output check are kernels/bench.py's (time_calls, input_sets,
checked_run): CUDA-graph replays of many back-to-back calls, inputs spanning 3x L2.
FLOPs follow the usual convention: forward 4·d per attendable (query, key) pair (two matmuls),
backward 10·d per pair (2.5x forward), whatever a kernel recomputes on top.
Without a GPU nothing is measured: the command says so and exits 0.

`run(xp=numpy, ...)` drives the same code on the CPU emulator (tests use it as a smoke test of the
harness; its times are emulator times, never GPU figures).
"""
from __future__ import annotations

import statistics
import time
from functools import partial

import numpy as np
from minigrad.kernels import attention as A


def attended_pairs(Tq, Tk, causal):
    """Number of (query, key) pairs a head attends (ignoring a padding mask)."""
    if not causal:
        return Tq * Tk
    i = np.arange(Tq)
    return int(np.clip(i + (Tk - Tq) + 1, 0, Tk).sum())


def flops(case, backward=False):
    B, H, Tq, Tk, d, causal, _ = case
    return (10 if backward else 4) * d * attended_pairs(Tq, Tk, causal) * B * H


class _CpuTimer:
    def __call__(self, fn, warmup, repeat):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def _pool_growth(xp, fn):
    """Bytes the CuPy memory pool had to reserve for one call (None on the CPU)."""
    if xp is np:
        return None
    pool = xp.get_default_memory_pool()
    xp.cuda.Device().synchronize()
    before = pool.used_bytes()
    pool.free_all_blocks()
    fn()
    xp.cuda.Device().synchronize()
    return pool.total_bytes() - before


def _unless_oom(xp, fn):
    """fn(), or None when the GPU runs out of memory (the unfused (Tq, Tk) buffers at long T)."""
    if xp is np:
        return fn()
    try:
        return fn()
    except xp.cuda.memory.OutOfMemoryError:
        xp.get_default_memory_pool().free_all_blocks()
        return None


def _torch_sdpa(xp, i):
    """(forward, forward+backward) callables with torch SDPA on the same data, or None."""
    if xp is np:
        return None
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    q, k, v, do = (torch.from_dlpack(i[n]) for n in ("q", "k", "v", "do"))
    mask = None
    if i["key_mask"] is not None:
        mask = torch.from_dlpack(i["key_mask"])[:, None, None, :]
    Tq, Tk = q.shape[2], k.shape[2]
    if i["is_causal"] and Tq != Tk:
        return None   # torch's is_causal is top-left aligned; ours is bottom-right
    causal = i["is_causal"] and mask is None
    if i["is_causal"] and mask is not None:
        mask = mask & torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))

    def fwd():
        with torch.no_grad():
            sdpa(q, k, v, attn_mask=mask, is_causal=causal)

    def fwd_bwd():
        o = sdpa(qg, kg, vg, attn_mask=mask, is_causal=causal)
        torch.autograd.grad(o, (qg, kg, vg), do)

    return fwd, fwd_bwd


def _passes(i):
    """(label, fused, unfused, torch index) callables for one set of inputs."""
    q, k, v, do, args = i["q"], i["k"], i["v"], i["do"], (i["key_mask"], i["is_causal"])

    def fused_fwd():
        A.attention_forward(q, k, v, *args)

    def fused_fwd_bwd():
        o, lse = A.attention_forward(q, k, v, *args)
        A.attention_backward(q, k, v, o, lse, do, *args)

    def unfused_fwd():
        A.attention_forward_ref(q, k, v, *args)

    def unfused_fwd_bwd():
        o, lse = A.attention_forward_ref(q, k, v, *args)
        A.attention_backward_ref(q, k, v, o, lse, do, *args)

    return (("fwd", fused_fwd, unfused_fwd, 0), ("fwd+bwd", fused_fwd_bwd, unfused_fwd_bwd, 1))


def _fmt(x, spec, scale=1.0, none="-"):
    return none if x is None else format(x * scale, spec)


def _checks(xp, case, dtype, sets):
    """The poisoned-memory check of the forward (on the first timed set) and of the backward (on
    the same seed's backward inputs), each against the float64 reference: {pass: check}."""
    from minigrad.kernels import bench as B

    fwd_k, bwd_k = A.KERNELS
    return {"fwd": B.checked_run(xp, A.FORWARD, partial(A.FORWARD.run, fwd_k), sets[0], dtype),
            "fwd+bwd": B.checked_run(xp, A.BACKWARD, partial(A.BACKWARD.run, bwd_k),
                                     A.backward_inputs(xp, np.random.default_rng(0), case, dtype), dtype)}


def run(xp, cases, dtype=np.float32, warmup=3, repeat=20, timer=None, out=print, info=None):
    """Time every case and print one table; returns the rows (dicts) for tests and JSON.

    On the GPU (xp is cupy) with kernels/bench.py's time_calls over rotated input sets, after the
    poisoned-output checks; on the CPU (xp is numpy: the emulator) `timer` or a wall-clock median."""
    from minigrad.kernels import bench as B

    dtype = np.dtype(dtype)
    gpu = xp is not np
    if gpu:
        info = info or B.device_info(xp)
    peak = info.get(f"peak_{dtype.name}") if gpu else None
    head = ["case", "dtype", "pass", "check", "fused ms", "TFLOP/s", "% peak", "how", "unfused ms", "speedup",
            "torch ms", "torch TFLOP/s", "fused extra MiB", "unfused extra MiB"]
    out(" | ".join(head))
    rows = []
    cpu_timer = timer or _CpuTimer()
    for case in cases:
        if gpu:
            sets = B.input_sets(xp, A.make_inputs, case, dtype, info.get("l2_bytes"))
            checks = _checks(xp, case, dtype, sets)
        else:
            sets, checks = [A.make_inputs(xp, np.random.default_rng(0), case, dtype)], {}
        per_set = [_passes(i) for i in sets]
        torch_sets = [_torch_sdpa(xp, i) for i in sets]
        for j, (label, fused, unfused, t_idx) in enumerate(per_set[0]):
            n_flops = flops(case) + (flops(case, True) if label == "fwd+bwd" else 0)
            if gpu:
                t = B.time_calls(xp, [ps[j][1] for ps in per_set], warmup, repeat)
                t_f, how = t["s"], t["method"]
                tu = B._time_or_none(xp, [ps[j][2] for ps in per_set], warmup, repeat)
                t_u = tu and tu["s"]
                tt = B._time_or_none(xp, [ts[t_idx] for ts in torch_sets], warmup, repeat, graph=False) \
                    if all(torch_sets) else None
                t_t = tt and tt["s"]
            else:
                t_f, how = cpu_timer(fused, warmup, repeat), "wall"
                t_u, t_t = cpu_timer(unfused, warmup, repeat), None
            check = checks.get(label)
            row = {"case": A.describe(case), "dtype": dtype.name, "pass_": label, "fused_s": t_f, "method": how,
                   "tflops": n_flops / t_f / 1e12, "pct_peak": None if peak is None else 100 * n_flops / t_f / peak,
                   "unfused_s": t_u, "speedup": None if t_u is None else t_u / t_f, "torch_s": t_t,
                   "torch_tflops": None if t_t is None else n_flops / t_t / 1e12,
                   "check_rel": check and check["rel"], "check_ok": None if check is None else check["ok"],
                   "fused_extra": _pool_growth(xp, fused),
                   "unfused_extra": None if t_u is None else _unless_oom(xp, partial(_pool_growth, xp, unfused))}
            rows.append(row)
            out(" | ".join([row["case"], dtype.name, label,
                            "-" if check is None else ("ok" if check["ok"] else f"FAIL {check['rel']:.1e}"),
                            _fmt(t_f, ".3f", 1e3), _fmt(row["tflops"], ".2f"), _fmt(row["pct_peak"], ".0f"), how,
                            _fmt(t_u, ".3f", 1e3, "out of memory"), _fmt(row["speedup"], ".2f"),
                            _fmt(t_t, ".3f", 1e3), _fmt(row["torch_tflops"], ".2f"),
                            _fmt(row["fused_extra"], ".1f", 2.0 ** -20), _fmt(row["unfused_extra"], ".1f", 2.0 ** -20)]))
        del A.ALLOCATIONS[:]     # the launchers' allocation log grows by a few entries per call
        if gpu:
            del sets, per_set, torch_sets
            xp.get_default_memory_pool().free_all_blocks()
    return rows


def main(dtype=None, warmup=2, repeat=20, out=print, json_path=None) -> int:
    """The `minigrad kernels bench attention` command: dtype None benches float32 and float64."""
    from minigrad.kernels.validate import gpu_available

    if not gpu_available():
        out("no GPU: CuPy is not installed or sees no CUDA device, so the attention kernels were not timed "
            "(their GPU figures are unmeasured). `minigrad kernels validate attention` runs them on the CPU "
            "emulator.")
        return 0
    import cupy
    from minigrad.kernels import bench as B

    info = B.device_info(cupy)
    out(f"device: {info['name']} (sm_{info.get('cc_major')}{info.get('cc_minor')}, {info.get('sms')} SMs at "
        f"{_fmt(info.get('clock_khz'), '.0f', 1e-3)} MHz); FMA peak float32 {_fmt(info.get('peak_float32'), '.1f', 1e-12)}"
        f", float64 {_fmt(info.get('peak_float64'), '.1f', 1e-12)} TFLOP/s (CUDA cores, from device attributes); "
        f"median of {repeat} timed regions after {warmup} warm-up rounds")
    dtypes = (np.float32, np.float64) if dtype is None else (np.dtype(dtype),)
    rows = []
    for dt in dtypes:
        rows += run(cupy, A.BENCH_CASES, dt, warmup, repeat, out=out, info=info)
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump({"device": info, "rows": rows}, f, indent=1)
    return 0 if all(r["check_ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
