"""The kernel workbench commands:

    minigrad kernels check [--arch sm_80 ...] [--only NAME] [--no-nvcc]
        NVRTC compile of every registered instantiation for sm_80 and sm_90 plus the ptxas table
        (registers, shared memory, spills); exit 1 on any error, warning or spill.
    minigrad kernels validate [NAME] [--version N] [--dtype D]
        each kernel version in each dtype it takes vs its NumPy reference (CPU emulator; also the GPU
        when present); exit 1 on failure.
    minigrad kernels bench [NAME] [--version N ...] [--dtype D ...]
        GPU timing, GB/s, % of peak bandwidth, next to the unfused CuPy composition; exit 0 without a GPU.
        Without --dtype each version runs in its main dtype (version 1 float32, version 2 bfloat16);
        `bench attention --version 1 --version 2` runs both on the same cases, side by side.

minigrad/cli.py calls add_subcommands(subparsers); `python -m minigrad.kernels.cli check` works standalone.
Imports are lazy so `minigrad --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys


def _check(args) -> int:
    from minigrad.kernels.check import ARCHS, format_report, run_check

    report = run_check(archs=tuple(args.arch or ARCHS), names_filter=args.only, use_nvcc=not args.no_nvcc)
    print(format_report(report))
    return 1 if report.errors else 0


DTYPES = ("float32", "float64", "float16", "bfloat16")
PRIMARY = {1: ("float32",), 2: ("bfloat16",)}   # bench without --dtype


def _dtype(name):
    import numpy as np
    from minigrad.kernels import dtypes

    return dtypes.BFLOAT16 if name == "bfloat16" else np.dtype(name)


def _validate(args) -> int:
    from minigrad.kernels.validate import format_results, validate

    results = validate(names=[args.name] if args.name else None, versions=args.version,
                       dtypes=[_dtype(d) for d in args.dtype] if args.dtype else None)
    if not results:
        print(f"no registered kernel matches {args.name!r}")
        return 1
    print(format_results(results))
    return 0 if all(r.ok for r in results) else 1


def _bench(args) -> int:
    versions = tuple(args.version) if args.version else None
    names = args.dtype or sorted({d for v in (versions or PRIMARY) for d in PRIMARY[v]})
    dts = [_dtype(d) for d in names]
    if args.name == "attention":   # attention reports TFLOP/s, vs the unfused composition and torch SDPA
        from minigrad.kernels.attention_bench import main as attention_bench
        return attention_bench(dtype=dts, warmup=args.warmup, repeat=args.repeat, versions=versions)

    from minigrad.kernels.bench import bench

    return bench(names=[args.name] if args.name else None, dtype=dts, warmup=args.warmup, repeat=args.repeat,
                 versions=versions)


def _sanitize(args) -> int:
    from minigrad.kernels.emulate.sanitize import main

    return main(names=[args.name] if args.name else None, schedules=args.schedule, seeds=args.seed,
                show_slowdown=args.slowdown, repeat=args.repeat)


def _add_commands(sub) -> None:
    c = sub.add_parser("check", help="NVRTC compile check and ptxas resource table (no GPU needed)")
    c.add_argument("--arch", action="append", help="target arch (repeatable; default sm_80 and sm_90)")
    c.add_argument("--only", action="append", help="only instantiations whose name contains this (repeatable)")
    c.add_argument("--no-nvcc", action="store_true", help="skip the nvcc --resource-usage cross-check")
    c.set_defaults(func=_check)
    v = sub.add_parser("validate", help="max abs/rel error of each kernel vs its NumPy reference")
    v.add_argument("name", nargs="?", help="only kernels whose name contains this")
    v.add_argument("--version", action="append", type=int, help="only this kernel version (repeatable)")
    v.add_argument("--dtype", action="append", choices=DTYPES, help="only this dtype (repeatable)")
    v.set_defaults(func=_validate)
    b = sub.add_parser("bench", help="GPU time, GB/s and %% of peak bandwidth vs the unfused composition")
    b.add_argument("name", nargs="?", help="only kernels whose name contains this")
    b.add_argument("--dtype", action="append", choices=DTYPES,
                   help="dtype (repeatable; default: version 1 float32, version 2 bfloat16)")
    b.add_argument("--version", action="append", type=int,
                   help="kernel version (repeatable; default all; two or more: side by side on the same cases)")
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--repeat", type=int, default=50)
    b.set_defaults(func=_bench)
    s = sub.add_parser("sanitize", help="the kernels on the CPU emulator with racecheck, memcheck and initcheck, "
                                        "under every schedule")
    s.add_argument("name", nargs="?", help="only kernels whose name contains this")
    s.add_argument("--schedule", action="append", help="forward, reverse or random:SEED (repeatable; default "
                                                       "forward, reverse and random with each --seed)")
    s.add_argument("--seed", action="append", type=int, help="random schedule seed (repeatable; default 0 and 1)")
    s.add_argument("--slowdown", action="store_true", help="time the cases with the checks off and on instead")
    s.add_argument("--repeat", type=int, default=7, help="runs per case and mode for --slowdown (median)")
    s.set_defaults(func=_sanitize)


def add_subcommands(subparsers) -> None:
    """Register `kernels check|validate|bench` on minigrad's top-level subparsers."""
    k = subparsers.add_parser("kernels", help="CUDA kernel workbench: check, validate, bench")
    sub = k.add_subparsers(dest="kernels_command", metavar="WHAT")
    sub.required = True
    _add_commands(sub)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minigrad.kernels.cli", description="CUDA kernel workbench")
    sub = p.add_subparsers(dest="kernels_command", metavar="WHAT")
    sub.required = True
    _add_commands(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
