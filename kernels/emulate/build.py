"""Build a .cu file into a shared library that runs its kernels on the CPU (see cuda_emu.h).

    lib = build("kernels/layernorm.cu", ["layernorm_forward<float>", ...])
    lib = build("kernels/layernorm.cu", names, check=True)     # the sanitizer build
    lib = build("source.cu", names, source=text)               # CUDA C text, not a file (shown as source.cu)
    lib.path           # the cached .so
    lib.static_smem    # {name expression: bytes of static __shared__ memory}
    lib.static_ranges  # {name expression: [(TLS offset, bytes), ...]} of those arrays (poisoned per block)
    lib.shared         # every shared array of the library: (TLS offset, bytes, name, dynamic?)

Plain build: one translation unit. A generated wrapper includes cuda_emu.h, then the source (under a
#line directive, so g++ errors name the .cu file), then one `MGEMU_KERNEL(name)` line per template
instantiation. A second generated unit defines the buffers behind every `extern __shared__ T name[];`
declaration (dynamic shared memory).

Checked build (check=True): the wrapper is compiled with -DMGEMU_CHECK and GCC's ThreadSanitizer
instrumentation (-fsanitize=thread), which calls a hook before every memory access; the hooks and the
emulator runtime come from a second, uninstrumented unit (cuda_emu.h with MGEMU_RUNTIME, compiled
once per header and cached). No TSan runtime is linked. -g1 keeps line tables, so a report names the
source lines (addr2line).

The source is the .cu's text with its `#include "…"` of kernels headers (kernels/ptx_platform.cuh)
spliced in under #line directives (kernels/includes.py), the text NVRTC compiles too.
Libraries are cached by the SHA-256 of (header, source, names, mode, compiler flags, g++ version) in
$MINIGRAD_CACHE_DIR or ~/.cache/minigrad/kernels, and written atomically, so concurrent processes
never see a half-written library. The cache is private and hash-checked (kernels/cache.py): its
folders are created 0700, a folder or file another user could write is refused with a
CacheSecurityError, and a cached library (or the checked runtime object linked into one) is used
only if it hashes to the SHA-256 recorded in its .json at build time, else it is built again;
builds of one folder take turns, and a build prints one line on stderr. Shared arrays come from the library's symbol table (`readelf`):
every block-scope thread_local (that is, `__shared__`) variable of a kernel counts towards that
kernel; shared arrays declared inside helper functions are not attributed (not counted, not poisoned
per block; the checked build still tracks them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from minigrad.kernels import cache, includes
from minigrad.kernels.emulate.errors import CompileError

HEADER = Path(__file__).with_name("cuda_emu.h")
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = [
    "-std=c++17", "-O2", "-fPIC", "-shared", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0",
    "-ffp-contract=off", "-fno-strict-aliasing", "-fno-extern-tls-init", "-DMINIGRAD_EMULATE", "-w",
    # every library keeps its own runtime state (kernel registry, fibers, shadow): no symbol of one
    # library binds to another's, even when two define the same kernel names
    "-fvisibility=hidden", "-fno-gnu-unique",
]
_COMPILE = [f for f in CXXFLAGS if f != "-shared"] + ["-c"]
# Instrumentation of the kernels' unit in the checked build. No loop is turned into a memset/memcpy
# call (the hooks would not see it). Line tables only, as DWARF 4: with DWARF 5 the addr2line here
# (binutils 2.40) names the generated wrapper instead of the #line file for a relative name.
CHECK_FLAGS = ["-DMGEMU_CHECK", "-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0",
               "-fno-tree-loop-distribute-patterns", "-g1", "-gdwarf-4"]
MAX_DYNAMIC_SMEM = 227 * 1024  # must match MGEMU_MAX_DYNAMIC_SMEM in cuda_emu.h

_EXTERN_SHARED = re.compile(r"extern\s+__shared__\b[^;]*?\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")

BuildError = CompileError  # g++ failed; the message holds the compiler's output


@dataclasses.dataclass(frozen=True)
class EmuLibrary:
    path: Path
    names: tuple[str, ...]
    static_smem: dict
    check: bool = False
    static_ranges: dict = dataclasses.field(default_factory=dict)
    shared: tuple = ()


def cache_dir() -> Path:
    return cache.root() / "kernels"


def normalize(name: str) -> str:
    """A name expression without spaces: the key under which cuda_emu.h registers it."""
    return "".join(name.split())


def _compiler_id() -> str:
    try:
        out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise CompileError(f"the C++ compiler {CXX!r} is not usable: {e}") from e
    return out.splitlines()[0] if out else CXX


def _sources(cu_path, source: str, names: list[str], check: bool) -> tuple[str, str]:
    wrapper = (["#define MGEMU_CHECK 1"] if check else []) + [
        f'#include "{HEADER}"', f'#line 1 "{cu_path}"', source, '#line 1 "<mgemu registrations>"']
    wrapper += [f"MGEMU_KERNEL({n})" for n in names]
    buffers = sorted(set(_EXTERN_SHARED.findall(source)))
    dyn = ["#include <cstring>", "#include <cstddef>"]
    dyn += [f"alignas(256) thread_local unsigned char {b}[{MAX_DYNAMIC_SMEM}];" for b in buffers]
    dyn.append('extern "C" __attribute__((visibility("default"))) void mgemu_poison_dynamic_smem(size_t n) {')
    dyn += [f"  std::memset({b}, 0xff, n);" for b in buffers]
    dyn.append("}")
    return "\n".join(wrapper) + "\n", "\n".join(dyn) + "\n"


def _short(symbol: str) -> tuple[str, str]:
    """('kernel<float>', 'red') from 'void kernel<float>(float const*, int)::red' (demangled)."""
    func, _, var = symbol.rpartition("::")
    depth, cut = 0, len(func)
    for i, ch in enumerate(func):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    head = func[:cut]
    depth, start = 0, 0
    for i, ch in enumerate(head):  # drop a return type ("void ") outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == " " and depth == 0:
            start = i + 1
    return head[start:], var


def _tls_symbols(so: Path, dynamic_names) -> list:
    """[(offset, size, demangled symbol)] of every TLS variable of the library (offsets in its TLS block)."""
    try:
        rd = subprocess.run(["readelf", "-sW", "-C", str(so)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    seen = {}
    for line in rd.splitlines():
        parts = line.split(None, 7)
        if len(parts) != 8 or parts[3] != "TLS" or parts[6] == "UND":
            continue
        name = parts[7].split("@")[0]
        if name.startswith("mgemu::"):
            continue  # the runtime's own thread_local
        if "::" not in name and name not in dynamic_names:
            continue
        seen[(int(parts[1], 16), name)] = int(parts[2], 0)
    return sorted((off, size, name) for (off, name), size in seen.items())


def _attribute(symbols, names: list[str]):
    """static_smem {name: bytes} and static_ranges {name: [(offset, bytes)]} per kernel."""
    sizes = {n: 0 for n in names}
    ranges = {n: [] for n in names}
    for off, size, symbol in symbols:
        if "::" not in symbol:
            continue
        func = normalize(symbol.rsplit("::", 1)[0])
        for n in names:
            i = func.find(n + "(")
            if i >= 0 and (i == 0 or not (func[i - 1].isalnum() or func[i - 1] == "_")):
                sizes[n] += size
                ranges[n].append((off, size))
    return sizes, ranges


def _run(cmd, verbose):
    if verbose:
        print(" ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _runtime_object(out_dir: Path, verbose: bool) -> Path:
    """The checked runtime unit (cuda_emu.h with MGEMU_RUNTIME), compiled once per header and flags."""
    flags = _COMPILE + ["-DMGEMU_CHECK", "-DMGEMU_RUNTIME"]
    key = hashlib.sha256("\0".join([HEADER.read_text(), " ".join(flags), _compiler_id()]).encode()).hexdigest()[:20]
    obj = out_dir / f"mgemu-runtime-{key}.o"
    if cache.verified(obj):        # linked into a library: checked like one
        return obj
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        src = Path(tmp) / "runtime.cpp"
        src.write_text(f'#include "{HEADER}"\n')
        proc = _run([CXX, *flags, str(src), "-o", str(Path(tmp) / "runtime.o")], verbose)
        if proc.returncode != 0:
            raise CompileError(f"emulator runtime build failed:\n{proc.stderr.strip()}", output=proc.stderr)
        cache.install(Path(tmp) / "runtime.o", obj)
    return obj


def _expanded(cu_path, source: str | None) -> tuple[str, str]:
    """(label, text): the .cu's name for messages and #line, and its source (read from `cu_path`
    unless given) with the kernels headers spliced in, so they are part of the cache key."""
    if source is None:
        cu_path = Path(cu_path).resolve()
        source = cu_path.read_text()
    label = str(cu_path)
    return label, includes.expand(source, cu_path, label)


def _path_for(label: str, source: str, names: list[str], check: bool) -> Path:
    """The cache path of the expanded `source` with the normalized instantiations `names`."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "", Path(label).stem) or "source"
    mode = "check" if check else "plain"
    key = hashlib.sha256("\0".join([HEADER.read_text(), label, source, "\n".join(names), mode,
                                    " ".join(CXXFLAGS + CHECK_FLAGS), _compiler_id()]).encode()).hexdigest()[:20]
    return cache_dir() / f"{stem}-{'chk-' if check else ''}{key}.so"


def library_path(cu_path, names, *, check: bool = False, source: str | None = None) -> Path:
    """Where the library of `cu_path` (or `source`) with the instantiations `names` is (or will be) cached."""
    label, source = _expanded(cu_path, source)
    return _path_for(label, source, [normalize(n) for n in names], check)


def _library(so: Path, names: list[str], check: bool, info: dict) -> EmuLibrary:
    return EmuLibrary(so, tuple(names), info["static_smem"], check,
                      {n: [tuple(r) for r in rs] for n, rs in info["static_ranges"].items()},
                      tuple(tuple(s) for s in info["shared"]))


def _cached(so: Path) -> dict | None:
    """The record of a cached library that passes its hash check, else None (build it again)."""
    info = cache.verified(so)
    keys = ("static_smem", "static_ranges", "shared")
    return info if info is not None and all(k in info for k in keys) else None


def build(cu_path, names, *, check: bool = False, source: str | None = None, verbose: bool = False) -> EmuLibrary:
    """Compile `cu_path` (or `source`, shown as cu_path) with the instantiations `names`, or reuse the cache."""
    names = [normalize(n) for n in names]
    label, source = _expanded(cu_path, source)
    if not names:
        raise ValueError(f"build({Path(label).name}): no kernel names to register")
    so = _path_for(label, source, names, check)
    out_dir = cache.private_dir(so.parent)
    info = _cached(so)
    if info is not None:
        return _library(so, names, check, info)
    with cache.build_lock(out_dir):
        info = _cached(so)       # another process built it while this one waited
        if info is None:
            print(f"minigrad: compiling {Path(label).name} for the CPU emulator (once; cached in {out_dir})...",
                  file=sys.stderr, flush=True)
            info = _compile(so, out_dir, label, source, names, check, verbose)
    return _library(so, names, check, info)


def _compile(so: Path, out_dir: Path, label: str, source: str, names: list[str], check: bool, verbose: bool) -> dict:
    """Build the library into `so` (with its hash record); returns the record."""
    wrapper, dyn = _sources(label, source, names, check)
    dynamic_names = set(_EXTERN_SHARED.findall(source))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        tmp = Path(tmp)
        (tmp / "wrapper.cpp").write_text(wrapper)
        (tmp / "dynsmem.cpp").write_text(dyn)
        tmp_so = tmp / "lib.so"
        if not check:
            proc = _run([CXX, *CXXFLAGS, str(tmp / "wrapper.cpp"), str(tmp / "dynsmem.cpp"), "-o", str(tmp_so)], verbose)
            failed = proc if proc.returncode != 0 else None
        else:
            runtime = _runtime_object(out_dir, verbose)
            cmds = [[CXX, *_COMPILE, *CHECK_FLAGS, str(tmp / "wrapper.cpp"), "-o", str(tmp / "wrapper.o")],
                    [CXX, *_COMPILE, str(tmp / "dynsmem.cpp"), "-o", str(tmp / "dynsmem.o")]]
            with ThreadPoolExecutor(2) as ex:
                procs = list(ex.map(lambda c: _run(c, verbose), cmds))
            failed = next((p for p in procs if p.returncode != 0), None)
            if failed is None:
                proc = _run([CXX, "-shared", "-fPIC", "-Wl,-z,defs", str(tmp / "wrapper.o"), str(runtime),
                             str(tmp / "dynsmem.o"), "-o", str(tmp_so)], verbose)
                failed = proc if proc.returncode != 0 else None
        if failed is not None:
            raise CompileError(f"emulator build of {Path(label).name} failed:\n{failed.stderr.strip()}",
                               output=failed.stderr)
        symbols = _tls_symbols(tmp_so, dynamic_names)
        static, ranges = _attribute(symbols, names)
        shared = []
        for off, size, symbol in symbols:
            if "::" in symbol:
                _, var = _short(symbol)
                shared.append((off, size, var, 0))
            else:
                shared.append((off, size, symbol, 1))
        info = {"source": label, "names": names, "check": check, "static_smem": static,
                "static_ranges": ranges, "shared": shared}
        info["sha256"] = cache.install(tmp_so, so, info)
    return info


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
