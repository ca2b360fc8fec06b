"""GEMV micro-benchmark for the quantized weight matmuls (quant_gemm.cpp) against float32 np.dot.

    python -m minigrad.kernels.cpu.quant_bench [--repeats 30] [--threads N] [--warm] [--rows M] [--arena]

One row per (K, N) shape (the GPT-2-size decode GEMVs, D=768: c_attn 768x2304, c_fc 768x3072,
c_proj 3072x768, the tied head 768x50257) and per weight type: median ms per call and GB/s of weight
bytes read (int8: N·K + the scales; bf16: 2·N·K; float32: 4·N·K; float32-pool is mg_f32_matmul, the
decode step's float32 GEMV, against BLAS's np.dot). Cold by default: each call reads
the next of enough weight copies to pass 1 GiB, so the weights come from memory, not the caches;
--warm reuses one copy. Each copy is its own NumPy array, so one under 4 MiB lies on 4 KiB pages
(NumPy advises transparent huge pages from 4 MiB); --arena packs all copies into one huge-page arena
instead (minigrad.hugepages.pack), as minigrad.nn.quantize.pack_weights does for a model. A benchmark, not a test: the
machine is shared, so quote same-run ratios.
Needs only NumPy, the native library and minigrad.hugepages (no minigrad.nn), so it sits beside the
kernel it measures.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from minigrad import hugepages
from minigrad.kernels.cpu import native

SHAPES = ((768, 2304), (768, 3072), (3072, 768), (768, 50257))   # (K in, N out)
COLD_BYTES = 1 << 30


def _int8(w):
    s = (np.abs(w).max(axis=1, keepdims=True) / 127.0).astype(np.float32)
    return np.clip(np.rint(w / np.where(s > 0, s, 1)), -127, 127).astype(np.int8), s


def _bf16_bits(w):
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16), without ml_dtypes."""
    u = w.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _median_ms(fn, args_list, repeats):
    for a in args_list[:2]:
        fn(*a)
    times = []
    for i in range(repeats):
        a = args_list[i % len(args_list)]
        t0 = time.perf_counter()
        fn(*a)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def _in_arena(groups):
    """The arrays of `groups` (a list of tuples of arrays) copied into one huge-page arena, each
    page-aligned (minigrad.hugepages.pack, pack_weights' layout); the same structure of views."""
    views = iter(hugepages.pack([a for g in groups for a in g]))
    return [tuple(next(views) for _ in g) for g in groups]


def run(repeats=30, threads=None, warm=False, rows=1, bf16_dot=False, shapes=SHAPES, out=print, arena=False):
    """Print and return [(shape, kind, ms, GB/s)]. kinds: float32 (np.dot), float32-pool (mg_f32_matmul),
    int8 (AVX-512 FMAs), int8-portable, int8-x24-vnni (x in 24-bit fixed point, the int8 default on
    VNNI CPUs), int8a8-vnni (x quantized per row to int8), bf16 (shift + FMAs), and bf16-dot
    (vdpbf16ps) if asked."""
    lib = native.load()
    if lib is None:
        raise RuntimeError("the native CPU library is not available")
    nt = threads or len(os.sched_getaffinity(0))
    isa = lib.quant_isa
    rng = np.random.default_rng(0)
    results = []
    out(f"quant_bench: M={rows} rows, threads={nt}, {'warm' if warm else 'cold (>1 GiB of weight copies)'}, "
        f"quant_isa={isa} (1 AVX-512, 2 VNNI, 4 AVX512-BF16), median of {repeats}"
        f"{', copies in one huge-page arena' if arena else ''}")
    out(f"{'K x N':>12} {'kind':>14} {'ms':>9} {'GB/s':>7} {'x f32':>6}")
    for k, n in shapes:
        results += _shape(lib, rng, k, n, rows, nt, isa, warm, bf16_dot, repeats, out, arena)
    return results


def _shape(lib, rng, k, n, rows, nt, isa, warm, bf16_dot, repeats, out, arena=False):
    """The rows of one (K, N) shape."""
    results = []
    x = rng.standard_normal((rows, k)).astype(np.float32)
    w0 = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    q0, s0 = _int8(w0)
    b0 = _bf16_bits(w0)
    wsum0 = q0.sum(axis=1, dtype=np.int32).reshape(n, 1)

    def copies(nbytes, make):
        c = 1 if warm else max(2, -(-COLD_BYTES // nbytes))
        made = [make() for _ in range(c)]
        return _in_arena(made) if arena else made

    kinds = [("float32", 4 * n * k, lambda: (w0.copy(),), lambda w: np.dot(x, w.T))]
    if isa & 1:
        kinds.append(("float32-pool", 4 * n * k, lambda: (w0.copy(),), lambda w: lib.f32_matmul(x, w, None, 1, nt)))
        kinds.append(("int8", n * k + 4 * n, lambda: (q0.copy(), s0.copy()),
                      lambda q, s: lib.q8_matmul(x, q, s, None, k, 1, nt)))
    kinds.append(("int8-portable", n * k + 4 * n, lambda: (q0.copy(), s0.copy()),
                  lambda q, s: lib.q8_matmul(x, q, s, None, k, 0, nt)))
    if isa & 2:
        kinds.append(("int8-x24-vnni", n * k + 4 * n, lambda: (q0.copy(), s0.copy()),
                      lambda q, s: lib.q8x24_matmul(x, q, s, wsum0, None, k, 2, nt)))
        kinds.append(("int8a8-vnni", n * k + 4 * n, lambda: (q0.copy(), s0.copy()),
                      lambda q, s: lib.q8a8_matmul(x, q, s, wsum0, None, k, 2, nt)))
    if isa & 1:
        kinds.append(("bf16", 2 * n * k, lambda: (b0.copy(),), lambda b: lib.bf16_matmul(x, b, None, 1, nt)))
    if isa & 4 and bf16_dot:
        kinds.append(("bf16-dot", 2 * n * k, lambda: (b0.copy(),), lambda b: lib.bf16_matmul(x, b, None, 2, nt)))
    f32_ms = None
    for name, nbytes, make, fn in kinds:
        args = copies(nbytes, make)
        ms = _median_ms(fn, args, repeats)
        f32_ms = ms if name == "float32" else f32_ms
        gbs = nbytes / ms / 1e6
        out(f"{f'{k}x{n}':>12} {name:>14} {ms:9.3f} {gbs:7.1f} {f32_ms / ms:6.2f}")
        results.append(((k, n), name, ms, gbs))
        del args
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m minigrad.kernels.cpu.quant_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rows", type=int, default=1, help="M, rows of x (1 = decode GEMV)")
    ap.add_argument("--warm", action="store_true", help="reuse one weight copy (cache-resident where it fits)")
    ap.add_argument("--bf16-dot", action="store_true", help="also time the AVX512-BF16 vdpbf16ps path")
    ap.add_argument("--arena", action="store_true", help="weight copies in one huge-page arena (pack_weights' layout)")
    a = ap.parse_args(argv)
    run(a.repeats, a.threads, a.warm, a.rows, a.bf16_dot, arena=a.arena)


if __name__ == "__main__":
    main()
