"""Load emulator libraries and launch their kernels, with a schedule and, on request, the checks.

    m = Module("kernels/layernorm.cu", names)          # a .cu file and its instantiations
    m = Module("source.cu", source=text, grow=True)    # CUDA C text; kernels added as they are launched
    m.launch(name, grid, block, args, shared_mem=0, max_shared=None, schedule=None, check=None)

schedule / check left as None come from `settings()` (innermost `with settings(...)`), else from the
environment: MINIGRAD_EMU_SCHEDULE=forward|reverse|random:SEED (default forward) and
MINIGRAD_EMU_CHECK=1|0 (default 0: the plain library, as fast as the emulator gets).

A Module builds at most two libraries per set of names: the plain one and the checked one (the
kernels instrumented, see build.py), each on first use and cached on disk.

args: NumPy arrays (passed as device pointers; the kernel writes them in place) or None (a null
pointer), and NumPy scalars of the parameter's exact C type (np.int32, np.float32, ...). Under the
checks every pointer argument's extent is known to the emulator, which reports an access outside
all of them naming the parameter (from the source) and the distance.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import mmap
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
from minigrad.kernels import cache
from minigrad.kernels.emulate.build import build, normalize
from minigrad.kernels.emulate.errors import BY_CODE, CompileError, KernelError, LaunchConfigError

DEFAULT_SHARED_LIMIT = 48 * 1024


# ----------------------------------------------------------------------------- schedules and settings

@dataclasses.dataclass(frozen=True)
class Schedule:
    """The order threads, warps and blocks run in: forward, reverse, or random with a seed."""
    mode: str = "forward"
    seed: int = 0

    def __str__(self):
        return f"random:{self.seed}" if self.mode == "random" else self.mode

    @property
    def code(self) -> int:
        return {"forward": 0, "reverse": 1, "random": 2}[self.mode]


def parse_schedule(value, what="schedule") -> Schedule:
    """Schedule from "forward", "reverse", "random" (seed 0) or "random:SEED" (a Schedule passes through)."""
    if isinstance(value, Schedule):
        return value
    text = str(value).strip().lower()
    if text in ("forward", "reverse"):
        return Schedule(text)
    m = re.fullmatch(r"random(?::(\d+))?", text)
    if m:
        return Schedule("random", int(m.group(1) or 0))
    raise ValueError(f"{what}={value!r}: expected forward, reverse or random:SEED (SEED a non-negative integer)")


def _env_check() -> bool:
    v = os.environ.get("MINIGRAD_EMU_CHECK", "0").strip().lower()
    if v in ("1", "on", "true", "yes"):
        return True
    if v in ("", "0", "off", "false", "no"):
        return False
    raise ValueError(f"MINIGRAD_EMU_CHECK={v!r}: expected 1 or 0")


_settings = threading.local()


def current() -> tuple[Schedule, bool]:
    """(schedule, check) for launches that do not pass their own."""
    stack = getattr(_settings, "stack", [])
    schedule = next((s for s, _ in reversed(stack) if s is not None), None)
    check = next((c for _, c in reversed(stack) if c is not None), None)
    if schedule is None:
        schedule = parse_schedule(os.environ.get("MINIGRAD_EMU_SCHEDULE", "forward"), "MINIGRAD_EMU_SCHEDULE")
    if check is None:
        check = _env_check()
    return schedule, check


@contextlib.contextmanager
def settings(schedule=None, check=None):
    """Run the emulated launches inside the block (shipped kernels included) under `schedule` and/or checks."""
    entry = (None if schedule is None else parse_schedule(schedule), None if check is None else bool(check))
    stack = getattr(_settings, "stack", None)
    if stack is None:
        stack = _settings.stack = []
    stack.append(entry)
    try:
        yield
    finally:
        stack.pop()


_substitutes: dict = {}


@contextlib.contextmanager
def substitute(cu: str, source: str):
    """Launches of kernels from the file named `cu` (e.g. "layernorm.cu") run `source` instead.

    For planting bugs in a copy of a shipped kernel and driving it through the real launchers. The
    copy is built one instantiation at a time, on first launch.
    """
    name = Path(cu).name
    previous = _substitutes.get(name)
    _substitutes[name] = Module(name, source=source, per_name=True)
    try:
        yield _substitutes[name]
    finally:
        if previous is None:
            _substitutes.pop(name, None)
        else:
            _substitutes[name] = previous


# ----------------------------------------------------------------------------- argument conversion

_CODE_OF_DTYPE = {np.dtype(np.float32): "f", np.dtype(np.float64): "d", np.dtype(np.bool_): "?"}
for _t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64):
    _d = np.dtype(_t)
    _CODE_OF_DTYPE[_d] = ("i" if _d.kind == "i" else "u") + str(8 * _d.itemsize)
_CODE_OF_DTYPE[np.dtype(np.float16)] = "f16"
# mg_bf16 pointers (the platform layer's 16-bit storage) take ml_dtypes.bfloat16 arrays or their raw
# bits as uint16 (see kernels/dtypes.py)
_BF16_DTYPES = {np.dtype(np.uint16)}
try:
    import ml_dtypes as _ml_dtypes

    _BF16_DTYPES.add(np.dtype(_ml_dtypes.bfloat16))
except ImportError:
    pass
_CTYPE_OF_CODE = {
    "f": ctypes.c_float, "d": ctypes.c_double, "?": ctypes.c_bool,
    "i8": ctypes.c_int8, "i16": ctypes.c_int16, "i32": ctypes.c_int32, "i64": ctypes.c_int64,
    "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32, "u64": ctypes.c_uint64,
}


class _Arg(ctypes.Structure):  # struct mgemu_arg
    _fields_ = [("base", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("index", ctypes.c_uint32),
                ("itemsize", ctypes.c_uint32), ("name", ctypes.c_char_p), ("dtype", ctypes.c_char_p)]


class _Options(ctypes.Structure):  # struct mgemu_options
    _fields_ = [("schedule", ctypes.c_int32), ("check", ctypes.c_int32), ("seed", ctypes.c_uint64),
                ("nargs", ctypes.c_int32), ("args", ctypes.POINTER(_Arg)), ("npoison", ctypes.c_int32),
                ("poison", ctypes.POINTER(ctypes.c_uint64)), ("schedule_name", ctypes.c_char_p)]


def _dims(v, what):
    t = (v,) if isinstance(v, (int, np.integer)) else tuple(v)
    if not 1 <= len(t) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in t):
        raise ValueError(f"{what} must be a positive int or a tuple of 1-3 positive ints, got {v!r}")
    return tuple(int(d) for d in t) + (1,) * (3 - len(t))


def param_names(source: str, function: str) -> list[str]:
    """Parameter names of the __global__ definition of `function` in `source` ([] if not found)."""
    for m in re.finditer(r"\b" + re.escape(function) + r"\s*\(", source):
        before = source[max(0, m.start() - 400):m.start()]
        if "__global__" not in before:
            continue
        depth, i = 1, m.end()
        while i < len(source) and depth:
            depth += {"(": 1, ")": -1}.get(source[i], 0)
            i += 1
        if not re.match(r"\s*\{", source[i:]):
            continue  # a declaration or a call
        params, depth, cur = [], 0, ""
        for ch in source[m.end():i - 1]:
            if ch in "<([":
                depth += 1
            elif ch in ">)]":
                depth -= 1
            if ch == "," and depth == 0:
                params.append(cur)
                cur = ""
            else:
                cur += ch
        params.append(cur)
        names = []
        for p in params:
            words = re.findall(r"[A-Za-z_]\w*", p.split("=")[0])
            names.append(words[-1] if words else "")
        return names if any(names) else []
    return []


# ----------------------------------------------------------------------------- source lines of a report

def _resolve_pcs(message: str, so: Path) -> str:
    """Replace every `(@pc:HEX@)` token by `(at file.cu:LINE)`, via addr2line (dropped when unavailable)."""
    pcs = sorted(set(re.findall(r"@pc:([0-9a-f]+)@", message)))
    if not pcs:
        return message
    where = {}
    if shutil.which("addr2line"):
        for pc in pcs:
            try:
                out = subprocess.run(["addr2line", "-e", str(so), "-i", "-C", "-f", "0x" + pc], capture_output=True,
                                     text=True, timeout=20, check=False).stdout.splitlines()
            except (OSError, subprocess.SubprocessError):
                continue
            for func, loc in zip(out[0::2], out[1::2]):  # innermost first
                file, _, line = loc.rpartition(":")
                if file and not file.endswith("cuda_emu.h") and not file.startswith("?"):
                    where[pc] = f"at {Path(file).name}:{line.split()[0]}"
                    break
    return re.sub(r" ?\(@pc:([0-9a-f]+)@\)", lambda m: f" ({where[m.group(1)]})" if m.group(1) in where else "",
                  message)


# ----------------------------------------------------------------------------- libraries and modules

class _Loaded:
    """One built library, loaded: its ctypes handle and per-kernel poison ranges."""

    def __init__(self, lib):
        self.lib = lib
        self.dll = cache.load_library(lib.path)   # hash-checked; the bytes checked are the bytes loaded
        d = self.dll
        d.mgemu_launch_ex.restype = ctypes.c_int
        d.mgemu_launch_ex.argtypes = [ctypes.c_char_p] + [ctypes.c_uint] * 6 + [ctypes.c_size_t] * 3 + [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.POINTER(_Options), ctypes.c_char_p, ctypes.c_size_t]
        d.mgemu_signature.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        self._poison = {}
        if lib.check:
            n = len(lib.shared)
            self._names = [s[2].encode() for s in lib.shared]
            d.mgemu_set_shared_symbols(
                n, (ctypes.c_uint64 * max(1, n))(*[s[0] for s in lib.shared]),
                (ctypes.c_uint64 * max(1, n))(*[s[1] for s in lib.shared]),
                (ctypes.c_char_p * max(1, n))(*self._names), (ctypes.c_int * max(1, n))(*[s[3] for s in lib.shared]))

    def poison(self, name):
        if name not in self._poison:
            flat = [v for r in self.lib.static_ranges.get(name, []) for v in r]
            self._poison[name] = (len(flat) // 2, (ctypes.c_uint64 * max(1, len(flat)))(*flat))
        return self._poison[name]


class _GuardedCopies:
    """A checked launch runs on copies of its array arguments: each set of overlapping arrays in its own
    buffer, between gaps that belong to no argument (as large as the data, 4 KiB at least), so an
    access that runs off one array cannot land in a neighbour the allocator placed right after it.
    The copies keep the originals' address modulo 256 (vector-load alignment) and are copied back,
    where the kernel changed them, after the launch."""

    def __init__(self, arrays):  # [(argument index, ndarray)]
        groups = []  # [lo, hi, [(index, address)]]
        for lo, hi, i in sorted((a.ctypes.data, a.ctypes.data + a.nbytes, i) for i, a in arrays):
            if groups and lo < groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], hi)
                groups[-1][2].append((i, lo))
            else:
                groups.append([lo, hi, [(i, lo)]])
        self.address, self.copies = {}, []
        for lo, hi, members in groups:
            n = hi - lo
            gap = max(4096, n)
            buf = mmap.mmap(-1, n + 2 * gap + 256)  # anonymous: the gaps, never touched, cost no memory
            start = ctypes.addressof(ctypes.c_char.from_buffer(buf))
            new = start + gap + (lo - (start + gap)) % 256
            ctypes.memmove(new, lo, n)
            self.address.update({i: new + (a - lo) for i, a in members})
            self.copies.append((lo, new, n, buf))

    def restore(self):
        for lo, new, n, _ in self.copies:
            if n and ctypes.string_at(new, n) != ctypes.string_at(lo, n):
                ctypes.memmove(lo, new, n)


def plain_kernels(source: str) -> list[str]:
    """Names of the non-template __global__ functions of a CUDA C text (comments ignored)."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.DOTALL)
    names = []
    for m in re.finditer(r"__global__\s+(?:void\s+)?(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:void\s+)?"
                         r"([A-Za-z_]\w*)\s*\(", text):
        before = text[:m.start()]
        start = max(before.rfind(";"), before.rfind("}"))
        if "template" not in before[start + 1:] and m.group(1) not in names:
            names.append(m.group(1))
    return names


class Module:
    """A .cu source built for the CPU emulator: plain and checked libraries, built on first use.

    names fixed (a shipped file and its registered instantiations); per_name: one library per
    launched kernel (a planted copy of a shipped file); grow: one library holding the source's
    non-template kernels and every instantiation launched so far (rebuilt when a new one comes)."""

    def __init__(self, path, names=(), *, source: str | None = None, per_name: bool = False, grow: bool = False):
        self.path = Path(path)
        self.cu = self.path.name
        self._source = source
        self.names = tuple(normalize(n) for n in names)
        self.per_name = per_name
        self.grow = grow
        self._grown = {}  # check -> names of the latest library
        self._loaded = {}
        self._sigs = {}
        self._params = {}
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        if self._source is None:
            self._source = self.path.read_text()
        return self._source

    def _load(self, names: tuple, check: bool) -> _Loaded:
        key = (names, check)
        with self._lock:
            if key not in self._loaded:
                lib = build(self.path, list(names), check=check, source=self._source)
                self._loaded[key] = _Loaded(lib)
            return self._loaded[key]

    def loaded(self, name: str, check: bool) -> _Loaded:
        if self.per_name:
            return self._load((name,), check)
        if self.grow:
            names = self._grown.get(check, self.names)
            if name not in names:
                names = names + (name,)
            try:
                loaded = self._load(names, check)
            except CompileError:
                if len(names) == 1:
                    raise
                loaded = self._load((name,), check)  # the detected names do not all compile: build alone
                self.per_name = True
                return loaded
            self._grown[check] = names
            return loaded
        if name not in self.names:
            raise KeyError(f"{self.cu}: kernel {name!r} is not registered; registered: {', '.join(self.names)}")
        return self._load(self.names, check)

    @property
    def lib(self):
        """The plain library of all registered names (built on first access)."""
        return self._load(self.names, False).lib

    def signature(self, name: str, check: bool = False) -> list[str]:
        """Parameter type codes of `name`, e.g. ['*f', '*f', 'i32', 'f']."""
        name = normalize(name)
        if name not in self._sigs:
            loaded = self.loaded(name, check)
            buf = ctypes.create_string_buffer(1024)
            if loaded.dll.mgemu_signature(name.encode(), buf, len(buf)) != 0:
                raise KeyError(f"{self.cu}: kernel {name!r} is not registered")
            s = buf.value.decode()
            self._sigs[name] = s.split(",") if s else []
        return self._sigs[name]

    def _param_names(self, name):
        if name not in self._params:
            self._params[name] = param_names(self.source, name.split("<")[0])
        return self._params[name]

    def _convert(self, name, i, code, a, keep, ranges, pnames):
        where = f"kernel {name}, argument {i}"
        if code.startswith("*"):
            pname = (pnames[i] if i < len(pnames) else "").encode()
            if a is None:
                ranges.append(_Arg(0, 0, i, 1, pname, b"null"))
                return ctypes.c_void_p(0)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{where} is a pointer ({code}); got {type(a).__name__}")
            want = code[1:]
            if want == "bf16":
                if a.dtype not in _BF16_DTYPES:
                    raise TypeError(f"{where} points to bf16 (bfloat16 or its uint16 bits); got an array of {a.dtype}")
            elif want not in ("v", "x1") and _CODE_OF_DTYPE.get(a.dtype) != want:
                raise TypeError(f"{where} points to {want}; got an array of {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}: array is not C-contiguous")
            keep.append(a)
            ranges.append(_Arg(a.ctypes.data, a.nbytes, i, a.itemsize, pname, str(a.dtype).encode()))
            return ctypes.c_void_p(a.ctypes.data)
        if not isinstance(a, np.generic):
            raise TypeError(f"{where} is {code}; pass a NumPy scalar of that exact type (got {type(a).__name__} "
                            f"{a!r}; CuPy would pass a Python int as long long and a float as double)")
        if _CODE_OF_DTYPE.get(a.dtype) != code:
            raise TypeError(f"{where} is {code}; got a NumPy {a.dtype} scalar")
        return _CTYPE_OF_CODE[code](a.item())

    def launch(self, name, grid, block, args, shared_mem=0, max_shared=None, *, schedule=None, check=None):
        sub = _substitutes.get(self.cu)
        if sub is not None and sub is not self:
            return sub.launch(name, grid, block, args, shared_mem, max_shared, schedule=schedule, check=check)
        default_schedule, default_check = current()
        schedule = default_schedule if schedule is None else parse_schedule(schedule)
        check = default_check if check is None else bool(check)
        name = normalize(name)
        g, b = _dims(grid, "grid"), _dims(block, "block")
        loaded = self.loaded(name, check)
        sig = self.signature(name, check)
        if len(args) != len(sig):
            raise TypeError(f"kernel {name} takes {len(sig)} arguments ({', '.join(sig)}), got {len(args)}")
        keep, ranges = [], []
        pnames = self._param_names(name) if check else []
        values = [self._convert(name, i, c, a, keep, ranges, pnames) for i, (c, a) in enumerate(zip(sig, args))]
        guard = None
        if check:
            guard = _GuardedCopies([(i, a) for i, (c, a) in enumerate(zip(sig, args)) if c[0] == "*" and a is not None])
            for r in ranges:
                if r.base:
                    r.base = values[r.index].value = guard.address[r.index]
        ptrs = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
        limit = DEFAULT_SHARED_LIMIT if max_shared is None else int(max_shared)
        npoison, poison = loaded.poison(name)
        arg_array = (_Arg * max(1, len(ranges)))(*ranges)
        sched_name = str(schedule).encode()
        opts = _Options(schedule.code, int(check), schedule.seed, len(ranges), arg_array, npoison, poison, sched_name)
        err = ctypes.create_string_buffer(4096)
        try:
            rc = loaded.dll.mgemu_launch_ex(name.encode(), *g, *b, int(shared_mem),
                                            int(loaded.lib.static_smem.get(name, 0)), limit, ptrs, len(values),
                                            ctypes.byref(opts), err, len(err))
        finally:
            if guard is not None:
                guard.restore()
        if rc != 0:
            msg = err.value.decode(errors="replace")
            cls = BY_CODE.get(rc, KernelError)
            if cls is not LaunchConfigError:
                msg = _resolve_pcs(msg, loaded.lib.path) + f" [schedule {schedule}]"
            raise cls(msg, kernel=name, schedule=str(schedule))
