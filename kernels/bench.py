"""`minigrad kernels bench [name]`: time per call, achieved GB/s and % of peak memory bandwidth of
each registered kernel on a GPU, next to the unfused array-library (CuPy) composition.

GB/s counts the minimum global-memory traffic of one call (Operation.bytes_moved: each input read
once, each output written once), so it is comparable across implementations. Times are medians of
`repeat` calls after `warmup` calls, measured with CUDA events. Without a GPU nothing is measured:
the command says so and exits 0.
"""

from __future__ import annotations

import statistics

import numpy as np


def _device_peak_gbs(cupy):
    """Theoretical DRAM bandwidth in GB/s from the device attributes, or None if unavailable."""
    rt = cupy.cuda.runtime
    try:
        dev = cupy.cuda.Device().id
        clock_khz = rt.deviceGetAttribute(rt.cudaDevAttrMemoryClockRate, dev)
        bus_bits = rt.deviceGetAttribute(rt.cudaDevAttrGlobalMemoryBusWidth, dev)
    except (AttributeError, RuntimeError):  # attribute missing in this CUDA/CuPy
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def _time(cupy, fn, warmup, repeat):
    for _ in range(warmup):
        fn()
    times = []
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e-3)
    return statistics.median(times)


def bench(names=None, dtype=np.float32, warmup=10, repeat=50, out=print) -> int:
    from minigrad.kernels import registry
    from minigrad.kernels.validate import gpu_available

    if not gpu_available():
        out("no GPU: CuPy is not installed or sees no CUDA device, so nothing was measured "
            "(GPU figures for these kernels are unmeasured). `minigrad kernels validate` runs them on the "
            "CPU emulator.")
        return 0
    import cupy

    peak = _device_peak_gbs(cupy)
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    out(f"device: {name}; peak memory bandwidth: {'unknown' if peak is None else f'{peak:.0f} GB/s'}; "
        f"median of {repeat} calls after {warmup}")
    head = ("kernel", "case", "dtype", "fused us", "GB/s", "% peak", "unfused us", "GB/s", "speedup")
    out("  ".join(head))
    for k in registry.KERNELS:
        if names and not any(n in k.name for n in names):
            continue
        op = k.op
        if op.bytes_moved is None or not op.bench_cases:
            continue
        for case in op.bench_cases:
            inputs = op.make_inputs(cupy, np.random.default_rng(0), case, np.dtype(dtype))
            t_fused = _time(cupy, lambda op=op, k=k, inputs=inputs: op.run(k, inputs), warmup, repeat)
            t_unf = _time(cupy, lambda op=op, inputs=inputs: op.unfused(inputs), warmup, repeat) if op.unfused else float("nan")
            nbytes = op.bytes_moved(case, dtype)
            gbs, gbs_u = nbytes / t_fused / 1e9, nbytes / t_unf / 1e9
            pct = f"{100 * gbs / peak:.0f}%" if peak else "-"
            out(f"{k.name}  {op.describe(case)}  {np.dtype(dtype).name}  {t_fused * 1e6:.1f}  {gbs:.0f}  {pct}  "
                f"{t_unf * 1e6:.1f}  {gbs_u:.0f}  {t_unf / t_fused:.2f}x")
    return 0
