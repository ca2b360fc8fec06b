"""Compile check of every registered kernel instantiation, without a GPU.

1. NVRTC (the compiler CuPy's RawModule uses at run time; pip package nvidia-cuda-nvrtc 13.x)
   compiles each .cu file with all its registered name expressions for every arch (sm_80, sm_90),
   with the options CuPy would use (runtime.NVRTC_OPTIONS + runtime.CUPY_ADDED_OPTIONS). An error,
   or any warning in the log, fails the check. NVRTC needs no GPU and no driver; it is loaded with
   ctypes (libnvrtc-builtins first, RTLD_GLOBAL), so CuPy is not required.
2. Resource report from ptxas: NVRTC is asked for a cubin with --ptxas-options=-v (its bundled
   ptxas, the one that builds what CuPy runs), giving registers, static shared memory, stack and
   spills per kernel and arch. If nvcc is on PATH, `nvcc -cubin --resource-usage` compiles the same
   instantiations as a cross-check (skipped with a message when nvcc is absent). Any spill fails.
3. Occupancy per arch, from the registers, the static shared memory and a typical launch (threads per
   block and dynamic shared memory from the kernel's Kernel.launch): resident blocks per SM (limited
   by warps, registers allocated per warp in units of 256, shared memory with 1 KiB reserved per
   block) and the fraction of the SM's 64 warp slots they fill. A launch that cannot fit on an SM
   fails the check.

    report = run_check()          # CheckReport(rows, errors, notes)
    print(format_report(report)); sys.exit(1 if report.errors else 0)
"""

from __future__ import annotations

import ctypes
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

ARCHS = ("sm_80", "sm_90")
KERNEL_DIR = Path(__file__).resolve().parent


class NvrtcUnavailable(RuntimeError):
    """libnvrtc.so.13 could not be found or loaded (pip install nvidia-cuda-nvrtc)."""


@dataclasses.dataclass
class Resource:
    registers: int = -1
    smem: int = -1
    stack: int = -1
    spill_stores: int = -1
    spill_loads: int = -1


@dataclasses.dataclass
class Row:
    cu: str
    name: str
    arch: str
    nvrtc: Resource
    nvcc: Resource | None = None
    threads: int | None = None      # of the typical launch (Kernel.launch), None if not declared
    dynamic_smem: int | None = None
    blocks_per_sm: int | None = None
    occupancy: float | None = None  # resident warps / 64


# Per-SM limits (CUDA programming guide, compute capabilities table; the occupancy calculator's
# allocation rules): registers, shared memory per SM and the opt-in maximum per block, warp and block
# slots.
ARCH_LIMITS = {
    "sm_80": {"regs": 65536, "smem_sm": 167936, "smem_block": 166912, "warps": 64, "blocks": 32},
    "sm_90": {"regs": 65536, "smem_sm": 233472, "smem_block": 232448, "warps": 64, "blocks": 32},
}
SMEM_RESERVED = 1024   # per block, by the CUDA runtime (compute capability 8.0 on)


def occupancy(arch, registers, static_smem, threads, dynamic_smem):
    """(resident blocks per SM, resident warps / max warps) of a launch on `arch`."""
    lim = ARCH_LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs"] // per_warp) // warps
    smem = static_smem + dynamic_smem
    if smem > lim["smem_block"]:
        return 0, 0.0
    by_smem = lim["smem_sm"] // (-(-(smem + SMEM_RESERVED) // 128) * 128)
    blocks = max(0, min(lim["blocks"], lim["warps"] // warps, by_regs, by_smem))
    return blocks, blocks * warps / lim["warps"]


@dataclasses.dataclass
class CheckReport:
    rows: list
    errors: list
    notes: list
    nvrtc_version: str = "?"


# ----------------------------------------------------------------------------- NVRTC via ctypes

_nvrtc = None


def _candidate_dirs():
    env = os.environ.get("MINIGRAD_NVRTC_DIR")
    if env:
        yield Path(env)
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        for base in nvidia.__path__:
            for sub in ("cu13/lib", "cuda_nvrtc/lib"):
                yield Path(base) / sub
    except ImportError:
        pass
    for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"):
        yield Path(d)


def load_nvrtc():
    """The NVRTC 13 shared library as a ctypes.CDLL (cached)."""
    global _nvrtc
    if _nvrtc is not None:
        return _nvrtc
    tried = []
    for d in _candidate_dirs():
        lib = d / "libnvrtc.so.13"
        tried.append(str(d))
        if not lib.exists():
            continue
        builtins = sorted(glob.glob(str(d / "libnvrtc-builtins.so.13*")))
        try:
            if builtins:
                ctypes.CDLL(builtins[0], mode=ctypes.RTLD_GLOBAL)
            nv = ctypes.CDLL(str(lib))
        except OSError as e:
            raise NvrtcUnavailable(f"cannot load {lib}: {e}") from e
        nv.nvrtcGetErrorString.restype = ctypes.c_char_p
        _nvrtc = nv
        return nv
    raise NvrtcUnavailable("libnvrtc.so.13 not found (pip install 'nvidia-cuda-nvrtc>=13,<14'); looked in "
                           + ", ".join(tried))


def nvrtc_version() -> str:
    nv = load_nvrtc()
    major, minor = ctypes.c_int(), ctypes.c_int()
    nv.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def nvrtc_compile(source: str, filename: str, names, options):
    """Compile with NVRTC. Returns (ok, log, lowered {name: mangled}, ptx or None)."""
    nv = load_nvrtc()
    prog = ctypes.c_void_p()
    rc = nv.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram: {nv.nvrtcGetErrorString(rc).decode()}", {}, None
    try:
        for n in names:
            nv.nvrtcAddNameExpression(prog, n.encode())
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        rc = nv.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        nv.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nv.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace").strip()
        if rc != 0:
            return False, log or nv.nvrtcGetErrorString(rc).decode(), {}, None
        lowered = {}
        for n in names:
            p = ctypes.c_char_p()
            if nv.nvrtcGetLoweredName(prog, n.encode(), ctypes.byref(p)) == 0 and p.value:
                lowered[n] = p.value.decode()
        return True, log, lowered, None
    finally:
        nv.nvrtcDestroyProgram(ctypes.byref(prog))


# ----------------------------------------------------------------------------- ptxas reports

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")
_PTXAS_INFO = re.compile(r"^ptxas(\s+info\s*:|\s+\.)")  # report lines of `ptxas -v`, not warnings


def parse_ptxas(log: str) -> dict:
    """{(mangled, arch): Resource} from `ptxas -v` output."""
    out, cur = {}, None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault((m.group(1), m.group(2)), Resource())
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            cur.registers = int(m.group(1))
            cur.smem = int(m.group(2) or 0)
    return out


def _nvcc_report(cu_path: Path, names, arch, notes):
    """Resources from `nvcc -cubin --resource-usage` for the instantiations, or None."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    refs = ",\n".join(f"  (const void*)&{n}" for n in names)
    wrapper = f'#include "{cu_path}"\nconst void* mgcheck_instantiate[] = {{\n{refs}\n}};\n'
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "instantiate.cu"
        src.write_text(wrapper)
        cmd = [nvcc, "-cubin", f"-arch={arch}", "--resource-usage", "-std=c++17", "-ftz=true", str(src),
               "-o", str(Path(tmp) / "out.cubin")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        notes.append(f"nvcc cross-check of {cu_path.name} for {arch} failed:\n{proc.stderr.strip()}")
        return {}
    return parse_ptxas(proc.stdout + proc.stderr)


# ----------------------------------------------------------------------------- the check


def run_check(archs=ARCHS, names_filter=None, use_nvcc=True) -> CheckReport:
    from minigrad.kernels import includes, registry, runtime

    report = CheckReport(rows=[], errors=[], notes=[])
    try:
        report.nvrtc_version = nvrtc_version()
    except NvrtcUnavailable as e:
        report.errors.append(str(e))
        return report
    options = list(runtime.NVRTC_OPTIONS) + list(runtime.CUPY_ADDED_OPTIONS)
    launch_of = {}
    for k in registry.KERNELS:
        if k.launch is not None:
            for n in k.instantiations:
                launch_of.setdefault(n, k.launch)
    if use_nvcc and shutil.which("nvcc") is None:
        report.notes.append("nvcc not on PATH: the nvcc cross-check of the ptxas report is skipped")
        use_nvcc = False
    for cu in registry.cu_files():
        names = registry.instantiations(cu)
        if names_filter:
            names = [n for n in names if any(f in n for f in names_filter)]
            if not names:
                continue
        path = KERNEL_DIR / cu
        source = includes.expand(path.read_text(), path, cu)    # its kernels headers spliced in, as CuPy gets it
        for arch in archs:
            # one compile per arch: cubin with the ptxas report; every other log line is a warning
            ok, log, lowered, _ = nvrtc_compile(source, cu, names,
                                                options + [f"--gpu-architecture={arch}", "--ptxas-options=-v"])
            if not ok:
                report.errors.append(f"{cu} [{arch}]: NVRTC error:\n{log}")
                continue
            warnings = "\n".join(line for line in log.splitlines() if line.strip() and not _PTXAS_INFO.match(line))
            if warnings:
                report.errors.append(f"{cu} [{arch}]: NVRTC warnings (warnings fail the check):\n{warnings}")
            missing = [n for n in names if n not in lowered]
            for n in missing:
                report.errors.append(f"{cu} [{arch}]: {n} was not instantiated (check its template arguments)")
            res = parse_ptxas(log)
            nvcc_res = _nvcc_report(path, names, arch, report.notes) if use_nvcc else None
            for n in names:
                if n not in lowered:
                    continue
                r = res.get((lowered[n], arch))
                if r is None:
                    report.errors.append(f"{cu} [{arch}]: no ptxas report for {n}")
                    r = Resource()
                row = Row(cu, n, arch, r, None if nvcc_res is None else nvcc_res.get((lowered[n], arch)))
                if n in launch_of and r.registers > 0 and arch in ARCH_LIMITS:
                    row.threads, row.dynamic_smem = launch_of[n](n)
                    row.blocks_per_sm, row.occupancy = occupancy(arch, r.registers, r.smem, row.threads,
                                                                 row.dynamic_smem)
                    if row.blocks_per_sm == 0:
                        report.errors.append(f"{n} [{arch}]: a block of {row.threads} threads with {r.registers} "
                                             f"registers and {r.smem} + {row.dynamic_smem} bytes of shared memory "
                                             "does not fit on an SM")
                report.rows.append(row)
                for src, rr in (("NVRTC ptxas", r), ("nvcc", row.nvcc)):
                    if rr is not None and (rr.spill_stores > 0 or rr.spill_loads > 0):
                        report.errors.append(f"{n} [{arch}] spills ({src}): {rr.spill_stores} bytes stored, "
                                             f"{rr.spill_loads} bytes loaded")
    return report


def format_report(report: CheckReport) -> str:
    lines = [f"NVRTC {report.nvrtc_version}; options: same as CuPy RawModule + --gpu-architecture"]
    head = ("kernel", "arch", "regs", "smem B", "stack B", "spill st/ld", "nvcc regs", "nvcc spill", "threads",
            "dyn smem B", "blocks/SM", "occupancy")
    rows = []
    for r in report.rows:
        n, c = r.nvrtc, r.nvcc
        rows.append((r.name, r.arch, str(n.registers), str(n.smem), str(n.stack),
                     f"{n.spill_stores}/{n.spill_loads}",
                     "-" if c is None else str(c.registers),
                     "-" if c is None else f"{c.spill_stores}/{c.spill_loads}",
                     "-" if r.threads is None else str(r.threads),
                     "-" if r.dynamic_smem is None else str(r.dynamic_smem),
                     "-" if r.blocks_per_sm is None else str(r.blocks_per_sm),
                     "-" if r.occupancy is None else f"{100 * r.occupancy:.0f}%"))
    if rows:
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines += [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*x) for x in rows]
        lines.append("smem B: static shared memory; threads, dyn smem B: a typical launch (attention: its tile; "
                     "layernorm: 8192 x 768 rows); occupancy: resident warps of 64 per SM")
    lines += [f"note: {n}" for n in report.notes]
    if report.errors:
        lines += [f"ERROR: {e}" for e in report.errors]
        lines.append(f"check FAILED ({len(report.errors)} error(s))")
    else:
        lines.append(f"check passed: {len(rows)} kernel/arch compilations, no errors, warnings or spills")
    return "\n".join(lines)
