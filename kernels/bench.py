"""`minigrad kernels bench [name]`: GPU time and achieved GB/s of each memory-bound kernel (the
layernorm family, every version and dtype: version 1 in float32/float64, version 2 in float32,
float16 and bfloat16 on the same cases, side by side), against a device-to-device copy measured in
the same run and the unfused array-library (CuPy) composition, and torch when it sees the GPU.
Without a GPU nothing is measured: the command says so and exits 0.

How a figure is measured (time_calls), so that neither the host nor the cache flatters it:
  - input sets rotated: enough independent sets of random inputs (never zeros) that one pass over
    them spans L2_ROTATION times the device's L2 cache, so each call reads from device memory;
  - many back-to-back calls per timed region (at least TARGET_S long), captured once as a CUDA
    graph and timed by replaying it between CUDA events: the Python launcher's overhead (checks,
    allocations, argument packing) is out of the kernel time. Where capture fails (torch, or an
    allocation the capture refuses) the same calls are timed back to back between events, and the
    row says "events"; the host's own time per call (wall clock) is reported beside it;
  - the median over `repeat` timed regions; `warmup` untimed rounds first (compilation, memory pool);
  - before timing, one call on the first set runs on memory poisoned with 0xFF bytes (NaN for
    float32 and float64) and its outputs are compared with the float64 reference: an output
    element the kernel never wrote, or a wrong one, fails the row's check.
GB/s counts the minimum global-memory traffic of one call (Operation.bytes_moved: each input read
once, each output written once); "% copy" divides it by the copy's GB/s (read + write counted).

Shared with kernels/attention_bench.py: device_info (peak figures from cudaDeviceGetAttribute; CUDA
13 removed cudaDeviceProp.clockRate), time_calls, input_sets, checked_run.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from functools import partial

import numpy as np
from minigrad.kernels import dtypes as dt_

L2_ROTATION = 3           # one pass over the input sets spans at least this many times the L2 cache
MAX_SETS = 8
TARGET_S = 2e-3           # each timed region (graph replay or event-timed loop) lasts at least this long
MEMORY_BOUND = ("layernorm.cu", "layernorm_v2.cu")   # reported in GB/s (attention: attention_bench)
# Cases the bench adds to a family's own bench_cases: the layernorm goal spans widths 768 to 8192.
EXTRA_CASES = {"layernorm.cu": ((8192, 8192, True),)}
ALL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), dt_.FLOAT16, dt_.BFLOAT16)

# cudaDeviceAttr codes (driver_types.h): stable across CUDA 11-13, whatever a CuPy build exports.
_ATTR = {"clock_khz": 13, "sms": 16, "mem_clock_khz": 36, "bus_bits": 37, "l2_bytes": 38,
         "cc_major": 75, "cc_minor": 76, "smem_optin": 97}
# FP32 / FP64 lanes per SM by compute capability (CUDA programming guide, arithmetic throughput).
_LANES = {(7, 0): (64, 32), (7, 5): (64, 2), (8, 0): (64, 32), (8, 6): (128, 2), (8, 7): (128, 2),
          (8, 9): (128, 2), (9, 0): (128, 64), (10, 0): (128, 64), (12, 0): (128, 2)}
# Dense fp16/bf16 tensor-core FLOPs per SM per clock with float32 accumulation, for the data-centre
# parts whose published peaks give it (A100 312 TFLOP/s at 108 SMs, 1.41 GHz; H100 SXM 989 at 132,
# 1.83 GHz): others report no tensor peak. The measured GEMM ceiling (gemm_ceiling) is the figure to
# trust; this one is the spec.
_TENSOR16 = {(8, 0): 2048, (9, 0): 4096}


# ----------------------------------------------------------------------------- the device

def device_info(cupy) -> dict:
    """Name, attributes and the ceilings they imply: spec DRAM bandwidth (memory clock x bus width,
    double data rate) and FMA peak per dtype (lanes x SMs x clock). None where an attribute is
    missing. Read with cudaDeviceGetAttribute, never cudaDeviceProp's clock fields."""
    rt = cupy.cuda.runtime
    dev = cupy.cuda.Device().id
    info = {}
    for key, code in _ATTR.items():
        try:
            info[key] = int(rt.deviceGetAttribute(code, dev))
        except Exception:   # noqa: BLE001  (an attribute this runtime does not know)
            info[key] = None
    name = rt.getDeviceProperties(dev)["name"]
    info["name"] = name.decode() if isinstance(name, bytes) else str(name)
    info.update(peaks(info))
    return info


def peaks(info) -> dict:
    """Spec bandwidth (B/s) and FMA peaks (FLOP/s) from attribute values (see device_info)."""
    out = {"spec_bw": None, "peak_float32": None, "peak_float64": None, "peak_tensor16": None}
    if info.get("mem_clock_khz") and info.get("bus_bits"):
        out["spec_bw"] = 2.0 * info["mem_clock_khz"] * 1e3 * info["bus_bits"] / 8
    lanes = _LANES.get((info.get("cc_major"), info.get("cc_minor")))
    if lanes and info.get("sms") and info.get("clock_khz"):
        for name, n in zip(("peak_float32", "peak_float64"), lanes):
            out[name] = 2.0 * n * info["sms"] * info["clock_khz"] * 1e3
    per_sm = _TENSOR16.get((info.get("cc_major"), info.get("cc_minor")))
    if per_sm and info.get("sms") and info.get("clock_khz"):
        out["peak_tensor16"] = float(per_sm) * info["sms"] * info["clock_khz"] * 1e3
    return out


def n_sets(set_bytes, l2_bytes, rotation=L2_ROTATION, max_sets=MAX_SETS) -> int:
    """How many input sets one pass must cycle through to span `rotation` x L2 (at least 1)."""
    if not l2_bytes or set_bytes <= 0:
        return 1
    return int(min(max_sets, max(1, math.ceil(rotation * l2_bytes / set_bytes))))


# ----------------------------------------------------------------------------- timing

def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def time_calls(cupy, calls, warmup=2, repeat=20, graph=True) -> dict:
    """Seconds per call of `calls` (one per input set) run round-robin on the GPU.

    Returns {"s": kernel seconds per call, "method": "graph" | "events", "host_s": wall-clock
    seconds per call of the Python loop, "spread": max/min of the timed regions}."""
    dev = cupy.cuda.Device()
    for _ in range(max(1, warmup)):
        for c in calls:
            c()
    dev.synchronize()
    t0 = time.perf_counter()
    for c in calls:
        c()
    dev.synchronize()
    host = (time.perf_counter() - t0) / len(calls)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for c in calls:
        c()
    stop.record()
    stop.synchronize()
    est = max(cupy.cuda.get_elapsed_time(start, stop) * 1e-3 / len(calls), 1e-7)
    rounds = max(1, math.ceil(TARGET_S / (est * len(calls))))
    n = rounds * len(calls)
    times, method = [], "events"
    if graph:
        stream = cupy.cuda.Stream(non_blocking=True)
        g = None
        try:
            with stream:
                stream.begin_capture()
                try:
                    for _ in range(rounds):
                        for c in calls:
                            c()
                finally:
                    g = stream.end_capture()
            g.upload(stream)
            for _ in range(repeat):
                start.record(stream)
                g.launch(stream)
                stop.record(stream)
                stop.synchronize()
                times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3 / n)
            method = "graph"
        except Exception:   # noqa: BLE001  (capture refused: torch's stream, an allocation, a sync)
            times = []
        finally:
            stream.synchronize()
            del g
    if not times:
        for _ in range(repeat):
            start.record()
            for _ in range(rounds):
                for c in calls:
                    c()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3 / n)
    return {"s": _median(times), "method": method, "host_s": host,
            "spread": max(times) / min(times) if min(times) > 0 else float("nan")}


# ----------------------------------------------------------------------------- inputs and checks

def _nbytes(inputs) -> int:
    return sum(int(v.nbytes) for v in inputs.values() if hasattr(v, "nbytes"))


def input_sets(cupy, make_inputs, case, dtype, l2_bytes, seed=0):
    """[inputs, ...]: the first from the family's make_inputs with a NumPy generator (the checked
    set), the others from the same function with CuPy's generator on the device (fresh values,
    fast), enough of them to span L2_ROTATION x L2."""
    dtype = np.dtype(dtype)
    first = make_inputs(cupy, np.random.default_rng(seed), case, dtype)
    sets = [first]
    for k in range(1, n_sets(_nbytes(first), l2_bytes)):
        try:
            s = make_inputs(cupy, cupy.random.default_rng(seed + k), case, dtype)
        except Exception:   # noqa: BLE001  (a family whose make_inputs needs NumPy's generator)
            s = make_inputs(cupy, np.random.default_rng(seed + k), case, dtype)
        # a generator that made float64 where float32 was asked for (half types and the float32
        # statistics of version 2 are left as made)
        sets.append({n: (v.astype(dtype) if hasattr(v, "dtype") and v.dtype == np.float64 and dtype == np.float32
                         else v) for n, v in s.items()})
    return sets


def poison_pool(cupy, nbytes) -> None:
    """Leave `nbytes` of 0xFF bytes (NaN as float32 and float64) in CuPy's memory pool, so the
    next allocations (a launcher's outputs) start as NaN instead of whatever was there."""
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    buf = cupy.empty(int(nbytes), dtype=cupy.uint8)
    buf.fill(0xFF)
    del buf
    cupy.cuda.Device().synchronize()


def checked_run(cupy, op, run, inputs, dtype) -> dict:
    """One call of `run(inputs)` on poisoned memory, each output vs op.reference in float64:
    {"rel": worst max|out - ref| / max|ref|, "ok": rel <= the op's tolerance and all finite}."""
    from minigrad.kernels.family import tolerance
    from minigrad.kernels.validate import _errors

    poison_pool(cupy, 4 * _nbytes(inputs) + (64 << 20))
    out = run(inputs)
    ref_in = {k: (dt_.to_float64(v) if hasattr(v, "dtype") else v) for k, v in inputs.items()}
    ref = {k: r for k, r in op.reference(ref_in).items() if r is not None}
    tols = tolerance(op, dtype, ref_in, ref)
    worst, ok = 0.0, True
    for key, r in ref.items():
        _, rel = _errors(out[key], r) if out.get(key) is not None else (None, float("inf"))
        worst = max(worst, rel)
        ok = ok and rel <= tols[key]
    return {"rel": worst, "ok": bool(ok)}


def copy_bandwidth(cupy, nbytes=2 << 30, repeat=10) -> float:
    """Device-to-device copy bandwidth in B/s (bytes read plus bytes written), median of `repeat`."""
    src = cupy.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = cupy.empty_like(src)
    t = time_calls(cupy, [partial(cupy.copyto, dst, src)], warmup=2, repeat=repeat, graph=False)
    return 2.0 * src.nbytes / t["s"]


def gemm_ceiling(cupy, n=8192, repeat=10) -> float:
    """FLOP/s of an n x n x n float16 GEMM through CuPy (cuBLAS on tensor cores, float32
    accumulation): the measured ceiling the half-precision attention rows are read against."""
    rng = cupy.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(np.float16)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(np.float16)
    c = cupy.empty((n, n), dtype=np.float16)
    t = time_calls(cupy, [partial(cupy.matmul, a, b, out=c)], warmup=2, repeat=repeat, graph=False)
    return 2.0 * n ** 3 / t["s"]


def _oom(cupy):
    return cupy.cuda.memory.OutOfMemoryError


def _time_or_none(cupy, calls, warmup, repeat, graph=True):
    try:
        return time_calls(cupy, calls, warmup, repeat, graph)
    except _oom(cupy):
        cupy.get_default_memory_pool().free_all_blocks()
        return None


def torch_view(a):
    """A torch tensor on the same memory (a uint16 CuPy array is bfloat16 bits)."""
    import torch

    t = torch.from_dlpack(a)
    return t.view(torch.bfloat16) if t.dtype == torch.uint16 else t


def _torch_layernorm(kernel_name, inputs):
    """(callable, label) running torch's layernorm forward, or its backward alone, on the same data."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    x = torch_view(inputs["x"])
    w = torch_view(inputs["weight"]) if inputs.get("weight") is not None else None
    b = torch_view(inputs["bias"]) if inputs.get("bias") is not None else None
    if w is not None and w.dtype != x.dtype:
        return None   # torch's layer_norm wants one dtype
    C = x.shape[1]
    if "forward" in kernel_name:
        return lambda: torch.nn.functional.layer_norm(x, (C,), w, b, inputs["eps"])
    dy = torch_view(inputs["dy"])
    mean = torch.from_dlpack(inputs["mean"]).reshape(-1, 1)
    rstd = torch.from_dlpack(inputs["rstd"]).reshape(-1, 1)
    mask = [True, w is not None, b is not None]
    return lambda: torch.ops.aten.native_layer_norm_backward(dy, x, [C], mean, rstd, w, b, mask)


# ----------------------------------------------------------------------------- the bench

def _fmt(x, spec, scale=1.0):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x * scale, spec)


def run(cupy, names=None, dtypes=(np.float32, np.float64), warmup=2, repeat=20, out=print, info=None,
        copy_bw=None, cases=None, versions=None) -> list:
    """Bench every memory-bound registered kernel (names: as `minigrad kernels` selects them; versions:
    the rungs to run, all by default) in each of `dtypes` it takes, on its bench cases and
    EXTRA_CASES (or on `cases`); returns the rows."""
    from minigrad.kernels import registry
    from minigrad.kernels.family import select

    info = info or device_info(cupy)
    copy_bw = copy_bw or copy_bandwidth(cupy)
    rows = []
    out("kernel  case  dtype  check  fused us  GB/s  % copy  how  host us/call  unfused us  GB/s  torch us  GB/s")
    for k in select(registry.KERNELS, names):
        if k.cu not in MEMORY_BOUND or (versions and k.version not in versions):
            continue
        op = k.op
        if op.bytes_moved is None:
            continue
        for dtype in dtypes:
            if np.dtype(dtype) not in [np.dtype(d) for d in op.dtypes]:
                continue
            for case in cases or tuple(op.bench_cases) + EXTRA_CASES.get(k.cu, ()):
                sets = input_sets(cupy, op.make_inputs, case, dtype, info.get("l2_bytes"))
                nbytes = op.bytes_moved(case, dtype)
                check = checked_run(cupy, op, partial(op.run, k), sets[0], dtype)
                fused = time_calls(cupy, [partial(op.run, k, s) for s in sets], warmup, repeat)
                unfused = _time_or_none(cupy, [partial(op.unfused, s) for s in sets], warmup, repeat) \
                    if op.unfused else None
                tfn = [_torch_layernorm(k.name, s) for s in sets]
                torch_t = _time_or_none(cupy, tfn, warmup, repeat, graph=False) if all(tfn) else None
                row = {"kernel": k.name, "version": k.version, "case": op.describe(case),
                       "dtype": dt_.name(dtype), "bytes": nbytes,
                       "sets": len(sets), "check_rel": check["rel"], "check_ok": check["ok"],
                       "fused_s": fused["s"], "fused_GBs": nbytes / fused["s"] / 1e9, "method": fused["method"],
                       "host_s": fused["host_s"], "spread": fused["spread"],
                       "pct_copy": 100 * nbytes / fused["s"] / copy_bw,
                       "unfused_s": unfused and unfused["s"],
                       "unfused_GBs": unfused and nbytes / unfused["s"] / 1e9,
                       "torch_s": torch_t and torch_t["s"], "torch_GBs": torch_t and nbytes / torch_t["s"] / 1e9}
                rows.append(row)
                out("  ".join((k.name, row["case"], row["dtype"], "ok" if check["ok"] else f"FAIL {check['rel']:.1e}",
                               _fmt(row["fused_s"], ".1f", 1e6), _fmt(row["fused_GBs"], ".0f"),
                               _fmt(row["pct_copy"], ".0f"), row["method"], _fmt(row["host_s"], ".1f", 1e6),
                               _fmt(row["unfused_s"], ".1f", 1e6), _fmt(row["unfused_GBs"], ".0f"),
                               _fmt(row["torch_s"], ".1f", 1e6), _fmt(row["torch_GBs"], ".0f"))))
                del sets
                cupy.get_default_memory_pool().free_all_blocks()
    return rows


def header(info, copy_bw) -> str:
    spec = info.get("spec_bw")
    return (f"device: {info['name']} (sm_{info.get('cc_major')}{info.get('cc_minor')}, {info.get('sms')} SMs, "
            f"L2 {_fmt(info.get('l2_bytes'), '.0f', 2.0 ** -20)} MiB); device-to-device copy {copy_bw / 1e9:.0f} GB/s "
            f"(read + write, this run); spec DRAM bandwidth {_fmt(spec, '.0f', 1e-9)} GB/s")


def bench(names=None, dtype=None, warmup=2, repeat=20, out=print, json_path=None, versions=None) -> int:
    """The `minigrad kernels bench` command: dtype None benches every dtype each version takes
    (version 1: float32, float64; version 2: float32, float16, bfloat16); dtype may be a list."""
    from minigrad.kernels.validate import gpu_available

    if not gpu_available():
        out("no GPU: CuPy is not installed or sees no CUDA device, so nothing was measured "
            "(GPU figures for these kernels are unmeasured). `minigrad kernels validate` runs them on the "
            "CPU emulator.")
        return 0
    import cupy

    info = device_info(cupy)
    copy_bw = copy_bandwidth(cupy)
    out(header(info, copy_bw))
    out(f"median of {repeat} timed regions of >= {TARGET_S * 1e3:.0f} ms after {warmup} warm-up rounds; "
        f"inputs rotated over sets spanning {L2_ROTATION}x L2")
    if dtype is None:
        dtypes = ALL_DTYPES
    else:
        dtypes = tuple(np.dtype(d) for d in (dtype if isinstance(dtype, (list, tuple)) else (dtype,)))
    rows = run(cupy, names, dtypes, warmup, repeat, out, info, copy_bw, versions=versions)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": info, "copy_GBs": copy_bw / 1e9, "rows": rows}, f, indent=1)
    return 0 if all(r["check_ok"] for r in rows) else 1
