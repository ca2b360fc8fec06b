"""`minigrad kernels bench attention`: the fused attention kernels against the unfused composition.

For each case (B, H, Tq, Tk, d, is_causal, masked) it reports, forward and forward+backward:
  time per call (median of `repeat` after `warmup`), TFLOP/s, % of the device's peak for the dtype,
  the unfused array-library composition (kernels/attention.py's reference: scores, softmax, P @ V, all
  materialising (Tq, Tk)), PyTorch's scaled_dot_product_attention when torch sees the GPU,
  and the memory the call allocated beyond its inputs (CuPy memory pool growth).
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

# FP32 / FP64 lanes per SM by compute capability (CUDA programming guide, arithmetic throughput).
_LANES = {(7, 0): (64, 32), (7, 5): (64, 2), (8, 0): (64, 32), (8, 6): (128, 2), (8, 7): (128, 2),
          (8, 9): (128, 2), (9, 0): (128, 64), (10, 0): (128, 64), (12, 0): (128, 2)}


def attended_pairs(Tq, Tk, causal):
    """Number of (query, key) pairs a head attends (ignoring a padding mask)."""
    if not causal:
        return Tq * Tk
    i = np.arange(Tq)
    return int(np.clip(i + (Tk - Tq) + 1, 0, Tk).sum())


def flops(case, backward=False):
    B, H, Tq, Tk, d, causal, _ = case
    return (10 if backward else 4) * d * attended_pairs(Tq, Tk, causal) * B * H


def _peak_flops(cupy, dtype):
    """Peak FMA throughput (FLOP/s) of the current device for dtype, or None if unknown."""
    try:
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        lanes = _LANES.get((props["major"], props["minor"]))
        if lanes is None:
            return None
        per_sm = lanes[0] if np.dtype(dtype) == np.float32 else lanes[1]
        return 2.0 * per_sm * props["multiProcessorCount"] * props["clockRate"] * 1e3
    except (KeyError, AttributeError, RuntimeError):   # attributes missing or the runtime refuses
        return None


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


class _CudaTimer:
    def __init__(self, cupy):
        self.cupy = cupy

    def __call__(self, fn, warmup, repeat):
        from minigrad.kernels.bench import _time   # the workbench's CUDA-event timer
        return _time(self.cupy, fn, warmup, repeat)


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


def run(xp, cases, dtype=np.float32, warmup=3, repeat=20, timer=None, out=print):
    """Time every case and print one table; returns the rows (dicts) for tests."""
    dtype = np.dtype(dtype)
    timer = timer or (_CpuTimer() if xp is np else _CudaTimer(xp))
    peak = None if xp is np else _peak_flops(xp, dtype)
    head = ["case", "pass", "fused ms", "TFLOP/s", "% peak", "unfused ms", "speedup", "torch ms",
            "fused extra MiB", "unfused extra MiB"]
    out(" | ".join(head))
    rows = []
    for case in cases:
        i = A.make_inputs(xp, np.random.default_rng(0), case, dtype)
        torch_fns = _torch_sdpa(xp, i)
        for label, fused, unfused, t_idx in _passes(i):
            n_flops = flops(case) + (flops(case, True) if label == "fwd+bwd" else 0)
            t_f = timer(fused, warmup, repeat)
            t_u = _unless_oom(xp, partial(timer, unfused, warmup, repeat))
            row = {"case": A.describe(case), "pass_": label, "fused_s": t_f, "tflops": n_flops / t_f / 1e12,
                   "pct_peak": None if peak is None else 100 * n_flops / t_f / peak, "unfused_s": t_u,
                   "speedup": None if t_u is None else t_u / t_f,
                   "torch_s": timer(torch_fns[t_idx], warmup, repeat) if torch_fns else None,
                   "fused_extra": _pool_growth(xp, fused),
                   "unfused_extra": None if t_u is None else _unless_oom(xp, partial(_pool_growth, xp, unfused))}
            rows.append(row)
            out(" | ".join([row["case"], label, _fmt(t_f, ".3f", 1e3), _fmt(row["tflops"], ".2f"),
                            _fmt(row["pct_peak"], ".0f"), _fmt(t_u, ".3f", 1e3, "out of memory"),
                            _fmt(row["speedup"], ".2f"), _fmt(row["torch_s"], ".3f", 1e3),
                            _fmt(row["fused_extra"], ".1f", 2.0 ** -20), _fmt(row["unfused_extra"], ".1f", 2.0 ** -20)]))
    return rows


def main(dtype=np.float32, warmup=10, repeat=50, out=print) -> int:
    from minigrad.kernels.validate import gpu_available

    if not gpu_available():
        out("no GPU: CuPy is not installed or sees no CUDA device, so the attention kernels were not timed "
            "(their GPU figures are unmeasured). `minigrad kernels validate attention` runs them on the CPU "
            "emulator.")
        return 0
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    peak = _peak_flops(cupy, dtype)
    out(f"device: {name}; peak {np.dtype(dtype).name} FMA throughput: "
        f"{'unknown' if peak is None else f'{peak / 1e12:.1f} TFLOP/s'}; median of {repeat} calls after {warmup}")
    run(cupy, A.BENCH_CASES, dtype, warmup, repeat, out=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
