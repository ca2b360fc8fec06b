"""Build a .cu file into a shared library that runs its kernels on the CPU (see cuda_emu.h).

    lib = build("kernels/layernorm.cu", ["layernorm_forward_warp<float>", ...])
    lib.path          # the cached .so
    lib.static_smem   # {name expression: bytes of static __shared__ memory}

The .cu source is compiled unchanged: a generated wrapper includes cuda_emu.h, then the source
(under a #line directive, so g++ errors name the .cu file), then one `MGEMU_KERNEL(name)` line per
template instantiation. A second generated unit defines the buffers behind every
`extern __shared__ T name[];` declaration (dynamic shared memory).

Libraries are cached by the SHA-256 of (header, source, names, compiler flags, g++ version) in
$MINIGRAD_CACHE_DIR or ~/.cache/minigrad/kernels, and written atomically, so concurrent processes
never see a half-written library. The cache is private and hash-checked (kernels/cache.py): its
folders are created 0700, a folder or file another user could write is refused with a
CacheSecurityError, and a cached library is returned only if it hashes to the SHA-256 recorded in
its .json at build time (otherwise it is built again); builds of one folder take turns.

Static shared memory per kernel is read from the library's symbol table (`nm`): every block-scope
thread_local (that is, `__shared__`) variable of a kernel counts towards that kernel; shared arrays
declared inside helper functions are not attributed.
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
from pathlib import Path

from minigrad.kernels import cache

HEADER = Path(__file__).with_name("cuda_emu.h")
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = [
    "-std=c++17", "-O2", "-fPIC", "-shared", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=0",
    "-ffp-contract=off", "-fno-strict-aliasing", "-fno-extern-tls-init", "-DMINIGRAD_EMULATE", "-w",
]
MAX_DYNAMIC_SMEM = 227 * 1024  # must match MGEMU_MAX_DYNAMIC_SMEM in cuda_emu.h

_EXTERN_SHARED = re.compile(r"extern\s+__shared__\b[^;]*?\b([A-Za-z_]\w*)\s*\[\s*\]\s*;")


class BuildError(RuntimeError):
    """g++ failed; the message holds the compiler's output."""


@dataclasses.dataclass(frozen=True)
class EmuLibrary:
    path: Path
    names: tuple[str, ...]
    static_smem: dict


def cache_dir() -> Path:
    return cache.root() / "kernels"


def normalize(name: str) -> str:
    """A name expression without spaces: the key under which cuda_emu.h registers it."""
    return "".join(name.split())


def _compiler_id() -> str:
    try:
        out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"the C++ compiler {CXX!r} is not usable: {e}") from e
    return out.splitlines()[0] if out else CXX


def _sources(cu_path: Path, source: str, names: list[str]) -> tuple[str, str]:
    wrapper = [f'#include "{HEADER}"', f'#line 1 "{cu_path}"', source, '#line 1 "<mgemu registrations>"']
    wrapper += [f"MGEMU_KERNEL({n})" for n in names]
    buffers = sorted(set(_EXTERN_SHARED.findall(source)))
    dyn = ["#include <cstring>", "#include <cstddef>"]
    dyn += [f"alignas(256) thread_local unsigned char {b}[{MAX_DYNAMIC_SMEM}];" for b in buffers]
    dyn.append('extern "C" __attribute__((visibility("default"))) void mgemu_poison_dynamic_smem(size_t n) {')
    dyn += [f"  std::memset({b}, 0xff, n);" for b in buffers]
    dyn.append("}")
    return "\n".join(wrapper) + "\n", "\n".join(dyn) + "\n"


def _static_smem(so: Path, names: list[str]) -> dict:
    """Bytes of block-scope __shared__ (thread_local) variables per kernel, from `nm`."""
    sizes = {normalize(n): 0 for n in names}
    try:
        out = subprocess.run(["nm", "-C", "-S", "--defined-only", str(so)], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sizes
    tls = set()
    try:  # TLS symbols are the ones in .tbss/.tdata
        rd = subprocess.run(["readelf", "-sW", "-C", str(so)], capture_output=True, text=True, check=True).stdout
        for line in rd.splitlines():
            parts = line.split(None, 7)
            if len(parts) == 8 and parts[3] == "TLS":
                tls.add(parts[7])
    except (OSError, subprocess.CalledProcessError):
        tls = None
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) != 4 or "::" not in parts[3]:
            continue
        symbol = parts[3]
        if tls is not None and symbol not in tls:
            continue
        func = normalize(symbol.rsplit("::", 1)[0])
        for n in sizes:
            i = func.find(n + "(")
            if i >= 0 and (i == 0 or not (func[i - 1].isalnum() or func[i - 1] == "_")):
                sizes[n] += int(parts[1], 16)
    return sizes


def library_path(cu_path, names) -> Path:
    """Where the library of `cu_path` with the instantiations `names` is (or will be) cached."""
    cu_path = Path(cu_path).resolve()
    names = [normalize(n) for n in names]
    key = hashlib.sha256(
        "\0".join([HEADER.read_text(), cu_path.read_text(), "\n".join(names), " ".join(CXXFLAGS),
                   _compiler_id()]).encode()
    ).hexdigest()[:20]
    return cache_dir() / f"{cu_path.stem}-{key}.so"


def build(cu_path, names, *, verbose: bool = False) -> EmuLibrary:
    """Compile `cu_path` with the instantiations `names` (or reuse the cached library)."""
    cu_path = Path(cu_path).resolve()
    names = [normalize(n) for n in names]
    if not names:
        raise ValueError(f"build({cu_path.name}): no kernel names to register")
    source = cu_path.read_text()
    so = library_path(cu_path, names)
    out_dir = cache.private_dir(so.parent)
    info = _cached(so)
    if info is not None:
        return EmuLibrary(so, tuple(names), info["static_smem"])
    wrapper, dyn = _sources(cu_path, source, names)
    with cache.build_lock(out_dir):
        info = _cached(so)       # another process built it while this one waited
        if info is not None:
            return EmuLibrary(so, tuple(names), info["static_smem"])
        print(f"minigrad: compiling {cu_path.name} for the CPU emulator (once; cached in {out_dir})...",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            tmp = Path(tmp)
            (tmp / "wrapper.cpp").write_text(wrapper)
            (tmp / "dynsmem.cpp").write_text(dyn)
            tmp_so = tmp / "lib.so"
            cmd = [CXX, *CXXFLAGS, str(tmp / "wrapper.cpp"), str(tmp / "dynsmem.cpp"), "-o", str(tmp_so)]
            if verbose:
                print(" ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError(f"emulator build of {cu_path.name} failed:\n{proc.stderr.strip()}")
            static = _static_smem(tmp_so, names)
            cache.install(tmp_so, so, {"source": str(cu_path), "names": names, "static_smem": static})
    return EmuLibrary(so, tuple(names), static)


def _cached(so: Path) -> dict | None:
    """The record of a cached library that passes its hash check, else None (build it again)."""
    info = cache.verified(so)
    return info if info is not None and isinstance(info.get("static_smem"), dict) else None


def clear_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)
