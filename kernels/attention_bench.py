"""`minigrad kernels bench attention`: the fused attention kernels against the unfused composition.

For each case (B, H, Tq, Tk, d, is_causal, masked), version and dtype (version 1: float32, float64;
version 2: bfloat16, float16) it reports, forward and forward+backward: time per call, TFLOP/s, % of
the device's peak for the dtype (version 1: the FMA peak of the CUDA cores; version 2: the dense
fp16/bf16 tensor-core peak where the spec gives it, and % of a float16 GEMM measured in the same
run), the unfused array-library composition (kernels/attention.py's reference: scores, softmax,
P @ V, all materialising (Tq, Tk); in float32 for half inputs, as a half-precision engine runs it),
PyTorch's scaled_dot_product_attention in the same dtype when torch sees the GPU, and the memory a
call allocates beyond its inputs. Several versions asked for together (`--version 1 --version 2`)
run the same cases, each in its dtype, rows side by side.
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
from minigrad.kernels import dtypes as D

# version -> (forward kernel, backward kernel, input maker, dtypes benched by default)
VERSIONS = {1: ("attention_forward", "attention_backward", A.make_inputs, (np.dtype(np.float32), np.dtype(np.float64))),
            2: ("attention_forward_v2", "attention_backward_v2", A.make_inputs_v2, (D.BFLOAT16, D.FLOAT16))}


HEAD = ("case", "version", "dtype", "pass", "check", "fused ms", "TFLOP/s", "% peak", "% GEMM", "how", "unfused ms",
        "speedup", "torch ms", "torch TFLOP/s", "fused extra MiB", "unfused extra MiB")


def _kernel(name):
    return next(k for k in A.KERNELS if k.name == name)


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
    from minigrad.kernels.bench import torch_view

    q, k, v, do = (torch_view(i[n]) for n in ("q", "k", "v", "do"))
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


def _passes(i, version=None):
    """(label, fused, unfused, torch index) callables for one set of inputs (the unfused composition
    of half inputs widens them to float32 first and rounds its outputs back)."""
    q, k, v, do, args = i["q"], i["k"], i["v"], i["do"], (i["key_mask"], i["is_causal"])
    half = D.kind(q) in ("half", "bf16")
    widen = D.to_float32 if half else (lambda a: a)
    narrow = (lambda a: D.from_float(a, q.dtype)) if half else (lambda a: a)

    def fused_fwd():
        A.attention_forward(q, k, v, *args, version=version)

    def fused_fwd_bwd():
        o, lse = A.attention_forward(q, k, v, *args, version=version)
        A.attention_backward(q, k, v, o, lse, do, *args, version=version)

    def unfused_fwd():
        o, _ = A.attention_forward_ref(widen(q), widen(k), widen(v), *args)
        narrow(o)

    def unfused_fwd_bwd():
        q32, k32, v32, do32 = widen(q), widen(k), widen(v), widen(do)
        o, lse = A.attention_forward_ref(q32, k32, v32, *args)
        for g in A.attention_backward_ref(q32, k32, v32, o, lse, do32, *args):
            narrow(g)

    return (("fwd", fused_fwd, unfused_fwd, 0), ("fwd+bwd", fused_fwd_bwd, unfused_fwd_bwd, 1))


def _fmt(x, spec, scale=1.0, none="-"):
    return none if x is None else format(x * scale, spec)


def _checks(xp, case, dtype, sets, version):
    """The poisoned-memory check of the forward (on the first timed set) and of the backward (on
    the same seed's backward inputs), each against the float64 reference: {pass: check}."""
    from minigrad.kernels import bench as B

    fwd_k, bwd_k = (_kernel(n) for n in VERSIONS[version][:2])
    bwd_in = bwd_k.op.make_inputs(xp, np.random.default_rng(0), case, dtype)
    return {"fwd": B.checked_run(xp, fwd_k.op, partial(fwd_k.op.run, fwd_k), sets[0], dtype),
            "fwd+bwd": B.checked_run(xp, bwd_k.op, partial(bwd_k.op.run, bwd_k), bwd_in, dtype)}


def run(xp, cases, dtype=np.float32, warmup=3, repeat=20, timer=None, out=print, info=None, version=None,
        gemm=None, header=True):
    """Time every case and print one table; returns the rows (dicts) for tests and JSON.

    On the GPU (xp is cupy) with kernels/bench.py's time_calls over rotated input sets, after the
    poisoned-output checks; on the CPU (xp is numpy: the emulator) `timer` or a wall-clock median.
    version: the kernel version (default: the one dtype's inputs go to); gemm: a measured GEMM
    ceiling in FLOP/s for the % GEMM column of half-precision rows."""
    from minigrad.kernels import bench as B

    dtype = np.dtype(dtype)
    version = version or (2 if D.kind(dtype) in ("half", "bf16") else 1)
    half = version == 2
    make_inputs = VERSIONS[version][2]
    gpu = xp is not np
    if gpu:
        info = info or B.device_info(xp)
    peak = (info.get("peak_tensor16") if half else info.get(f"peak_{dtype.name}")) if gpu else None
    if header:
        out(" | ".join(HEAD))
    rows = []
    cpu_timer = timer or _CpuTimer()
    for case in cases:
        if gpu:
            sets = B.input_sets(xp, make_inputs, case, dtype, info.get("l2_bytes"))
            checks = _checks(xp, case, dtype, sets, version)
        else:
            sets, checks = [make_inputs(xp, np.random.default_rng(0), case, dtype)], {}
        per_set = [_passes(i, version) for i in sets]
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
            row = {"case": A.describe(case), "version": version, "dtype": D.name(dtype), "pass_": label,
                   "fused_s": t_f, "method": how,
                   "tflops": n_flops / t_f / 1e12, "pct_peak": None if peak is None else 100 * n_flops / t_f / peak,
                   "pct_gemm": None if not (half and gemm) else 100 * n_flops / t_f / gemm,
                   "unfused_s": t_u, "speedup": None if t_u is None else t_u / t_f, "torch_s": t_t,
                   "torch_tflops": None if t_t is None else n_flops / t_t / 1e12,
                   "check_rel": check and check["rel"], "check_ok": None if check is None else check["ok"],
                   "fused_extra": _pool_growth(xp, fused),
                   "unfused_extra": None if t_u is None else _unless_oom(xp, partial(_pool_growth, xp, unfused))}
            rows.append(row)
            out(" | ".join([row["case"], str(version), D.name(dtype), label,
                            "-" if check is None else ("ok" if check["ok"] else f"FAIL {check['rel']:.1e}"),
                            _fmt(t_f, ".3f", 1e3), _fmt(row["tflops"], ".2f"), _fmt(row["pct_peak"], ".0f"),
                            _fmt(row["pct_gemm"], ".0f"), how,
                            _fmt(t_u, ".3f", 1e3, "out of memory"), _fmt(row["speedup"], ".2f"),
                            _fmt(t_t, ".3f", 1e3), _fmt(row["torch_tflops"], ".2f"),
                            _fmt(row["fused_extra"], ".1f", 2.0 ** -20), _fmt(row["unfused_extra"], ".1f", 2.0 ** -20)]))
        del A.ALLOCATIONS[:]     # the launchers' allocation log grows by a few entries per call
        if gpu:
            del sets, per_set, torch_sets
            xp.get_default_memory_pool().free_all_blocks()
    return rows


def main(dtype=None, warmup=2, repeat=20, out=print, json_path=None, versions=None) -> int:
    """The `minigrad kernels bench attention` command. versions: the kernel versions (default all,
    each on its own bench cases); dtype: a dtype or a list (default: every dtype each version takes).
    Two or more versions named explicitly run the same cases, the version-2 goal shapes
    (kernels/attention.py V2_BENCH_CASES), rows side by side per case."""
    from minigrad.kernels.validate import gpu_available

    if not gpu_available():
        out("no GPU: CuPy is not installed or sees no CUDA device, so the attention kernels were not timed "
            "(their GPU figures are unmeasured). `minigrad kernels validate attention` runs them on the CPU "
            "emulator.")
        return 0
    import cupy
    from minigrad.kernels import bench as B

    info = B.device_info(cupy)
    side_by_side = bool(versions) and len(versions) > 1
    versions = tuple(versions or VERSIONS)
    wanted = None if dtype is None else [np.dtype(d) for d in (dtype if isinstance(dtype, (list, tuple)) else [dtype])]
    plan = [(v, dt) for v in versions for dt in VERSIONS[v][3] if wanted is None or dt in wanted]
    gemm = B.gemm_ceiling(cupy) if any(v == 2 for v, _ in plan) else None
    out(f"device: {info['name']} (sm_{info.get('cc_major')}{info.get('cc_minor')}, {info.get('sms')} SMs at "
        f"{_fmt(info.get('clock_khz'), '.0f', 1e-3)} MHz); FMA peak float32 {_fmt(info.get('peak_float32'), '.1f', 1e-12)}"
        f", float64 {_fmt(info.get('peak_float64'), '.1f', 1e-12)} TFLOP/s (CUDA cores, from device attributes); "
        f"fp16/bf16 tensor-core peak {_fmt(info.get('peak_tensor16'), '.0f', 1e-12)} TFLOP/s (dense, the spec's FLOP "
        f"per clock per SM at the attribute clock); "
        f"float16 GEMM {_fmt(gemm, '.0f', 1e-12)} TFLOP/s measured in this run; "
        f"median of {repeat} timed regions after {warmup} warm-up rounds")
    rows = []
    if side_by_side:
        out(" | ".join(HEAD))
        for case in A.V2_BENCH_CASES:
            for v, dt in plan:
                rows += run(cupy, [case], dt, warmup, repeat, out=out, info=info, version=v, gemm=gemm, header=False)
    else:
        for v, dt in plan:
            rows += run(cupy, A.V2_BENCH_CASES if v == 2 else A.BENCH_CASES, dt, warmup, repeat, out=out, info=info,
                        version=v, gemm=gemm)
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump({"device": info, "gemm_flops": gemm, "rows": rows}, f, indent=1)
    return 0 if all(r["check_ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
