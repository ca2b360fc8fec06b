"""Build the native CPU sources with the machine's C++ compiler at first use and call them through ctypes.

Four translation units make one library: fast_cpu.cpp (row loops and Adam, built with
-ffp-contract=off so each expression rounds as its NumPy reference), gelu.cpp and
attention_cpu.cpp (arithmetic-bound loops and small GEMMs, built with fused multiply-adds), and
quant_gemm.cpp (int8 and bfloat16 weight matmuls for minigrad.nn.quantize, float32 activations).

    lib = load()          # a NativeCPU, or None (no compiler, build failure: one warning, then None)
    y, slope = lib.gelu(x)

The library is cached by the SHA-256 of (sources, compiler flags, compiler version, CPU model and
flags) in $MINIGRAD_CACHE_DIR or ~/.cache/minigrad/cpu, written atomically, and loaded only from a
private folder and only if it hashes to the value recorded at its build (kernels/cache.py: a
planted or altered library is refused or rebuilt, never loaded). The compiler is $CXX
(default g++); compiling prints one line on stderr. Every method takes NumPy arrays that the caller has checked are C-contiguous and
of one dtype, float32 or float64 (see ``eligible``); outputs are fresh arrays or in-place updates.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from minigrad.kernels import cache

SOURCE = Path(__file__).with_name("fast_cpu.cpp")
FMA_SOURCES = (Path(__file__).with_name("gelu.cpp"), Path(__file__).with_name("attention_cpu.cpp"),
               Path(__file__).with_name("quant_gemm.cpp"))
HEADERS = (Path(__file__).with_name("vecmath.h"),)
CXXFLAGS = ["-std=c++17", "-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fPIC",
            "-fvisibility=hidden", "-w"]
SOURCE_FLAGS = {"fast_cpu.cpp": ["-ffp-contract=off"], "gelu.cpp": ["-ffp-contract=fast", "-mprefer-vector-width=512"],
                "attention_cpu.cpp": ["-ffp-contract=fast"],
                "quant_gemm.cpp": ["-ffp-contract=fast", "-mprefer-vector-width=512"]}
ABI_VERSION = 6
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_lock = threading.Lock()
_loaded = False
_lib = None


class NativeBuildError(RuntimeError):
    """The compiler is missing or failed; the message says which and why."""


def cache_dir() -> Path:
    return cache.root() / "cpu"


def _cpu_id() -> str:
    """The CPU model and feature flags (what -march=native depends on)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "flags", "Features", "CPU part") and k not in fields:
                fields[k] = v.strip()
    except OSError:
        pass
    return platform.machine() + "|" + "|".join(f"{k}={v}" for k, v in sorted(fields.items()))


def _compiler_id(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeBuildError(f"the C++ compiler {cxx!r} is not usable ({e})") from e
    return out.splitlines()[0] if out else cxx


def library_path(cxx: str | None = None) -> Path:
    """Where the library for these sources, flags, compiler and CPU is (or will be) cached."""
    cxx = cxx or os.environ.get("CXX", "g++")
    texts = [p.read_text() for p in (SOURCE, *FMA_SOURCES, *HEADERS)]
    flags = " ".join(CXXFLAGS) + repr(sorted(SOURCE_FLAGS.items()))
    key = hashlib.sha256("\0".join([*texts, flags, _compiler_id(cxx), _cpu_id()]).encode())
    return cache_dir() / f"fast_cpu-{key.hexdigest()[:20]}.so"


def build() -> Path:
    """Compile the sources, or reuse the cached library if it passes its hash check; returns the
    .so path. CacheSecurityError if the cache folder or a file in it is not this user's alone."""
    cxx = os.environ.get("CXX", "g++")
    so = library_path(cxx)
    out_dir = cache.private_dir(so.parent)
    if cache.verified(so):
        return so
    with cache.build_lock(out_dir):
        if cache.verified(so):      # another process built it while this one waited
            return so
        print(f"minigrad: compiling the native CPU code (once; cached in {out_dir})...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
            objects = []
            for src in (SOURCE, *FMA_SOURCES):
                obj = Path(tmp) / (src.stem + ".o")
                cmd = [cxx, *CXXFLAGS, *SOURCE_FLAGS.get(src.name, []), f"-I{HEADERS[0].parent}", "-c", str(src),
                       "-o", str(obj)]
                _run(cxx, src.name, cmd)
                objects.append(str(obj))
            tmp_so = Path(tmp) / "lib.so"
            _run(cxx, "the link", [cxx, "-shared", *objects, "-o", str(tmp_so)])
            cache.install(tmp_so, so, {"abi": ABI_VERSION})
    return so


def _run(cxx: str, what: str, cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode != 0:
        raise NativeBuildError(f"{cxx} failed on {what}:\n{proc.stderr.strip()}")


def load():
    """The NativeCPU library, built on first call; None (with one warning naming why) if it cannot be."""
    global _loaded, _lib
    if _loaded:
        return _lib
    with _lock:
        if not _loaded:
            try:        # a CacheSecurityError is not caught: it is reported, never worked around
                _lib = NativeCPU(cache.load_library(build()))
            except (NativeBuildError, OSError, AttributeError, subprocess.SubprocessError) as e:
                warnings.warn(f"minigrad: the native CPU path is off, NumPy is used instead: {e}",
                              RuntimeWarning, stacklevel=2)
                _lib = None
            _loaded = True
    return _lib


def reset() -> None:
    """Forget the loaded library (tests use it to retry with another compiler or cache)."""
    global _loaded, _lib
    with _lock:
        _loaded, _lib = False, None


def eligible(*arrays) -> bool:
    """True if every non-None array is a C-contiguous numpy.ndarray of one dtype, float32 or float64."""
    dt = None
    for a in arrays:
        if a is None:
            continue
        if type(a) is not np.ndarray or not a.flags.c_contiguous or a.dtype not in _DTYPES:
            return False
        if dt is None:
            dt = a.dtype
        elif a.dtype != dt:
            return False
    return dt is not None


def _p(a):
    return None if a is None else a.ctypes.data


class NativeCPU:
    """Typed wrappers over the compiled functions. Sizes are int64; pointers are void*."""

    def __init__(self, cdll):
        if cdll.mg_abi_version() != ABI_VERSION:
            raise OSError(f"fast_cpu library ABI {cdll.mg_abi_version()} != {ABI_VERSION}")
        P, I, D, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
        returns = {"cross_entropy": I}
        sigs = {
            "gelu": [P, P, P, I],
            "ln_fwd": [P, P, P, P, P, P, I, I, D],
            "ln_bwd": [P, P, P, P, P, P, P, P, I, I],
            "softmax": [P, I, I, I, I, C, P, D],
            "attn_ds": [P, P, I, I, D],
            "adam": [P, P, P, P, I, C, D, D, D, D, D, D, D, D, D],
            "cross_entropy": [P, P, I, I, I, P, P],
            "scatter_add_rows": [P, P, P, I, I],
            "qkv_attn_fwd": [P, P, P, I, I, I, I, C, D],
            "qkv_attn_bwd": [P, P, P, P, P, I, I, I, I, C, D],
        }
        self._fn = {}
        for name, args in sigs.items():
            for suffix, dt in (("f32", _DTYPES[0]), ("f64", _DTYPES[1])):
                f = getattr(cdll, f"mg_{name}_{suffix}")
                f.argtypes, f.restype = args, returns.get(name)
                self._fn[name, dt] = f
        for name, args in {"q8_matmul": [P, P, P, P, P, I, I, I, I, C, C],
                           "f32_matmul": [P, P, P, P, I, I, I, C, C],
                           "bf16_matmul": [P, P, P, P, I, I, I, C, C],
                           "q8a8_matmul": [P, P, P, P, P, P, I, I, I, I, C, C, P, P],
                           "q8x24_matmul": [P, P, P, P, P, P, I, I, I, I, C, C, P]}.items():
            f = getattr(cdll, f"mg_{name}")
            f.argtypes, f.restype = args, C
            self._fn[name] = f
        f = cdll.mg_decode_attention
        f.argtypes, f.restype = [P, I, P, P, P, I, I, I, I, I, ctypes.c_float, C, C], C
        self._fn["decode_attention"] = f
        cdll.mg_quant_isa.restype = C
        self.quant_isa = int(cdll.mg_quant_isa())   # bit 0 AVX-512, bit 1 VNNI, bit 2 AVX512-BF16
        self.cdll = cdll

    def gelu(self, x, out=None):
        """Exact GELU of x: (y, slope = dy/dx), both shaped like x. ``out`` may be x (in place)."""
        y, slope = (np.empty_like(x) if out is None else out), np.empty_like(x)
        self._fn["gelu", x.dtype](_p(x), _p(y), _p(slope), x.size)
        return y, slope

    def layernorm_forward(self, x2, weight, bias, eps):
        """x2 (N, C) -> y (N, C), mean (N, 1), rstd (N, 1)."""
        n, c = x2.shape
        y = np.empty_like(x2)
        mean, rstd = np.empty((n, 1), x2.dtype), np.empty((n, 1), x2.dtype)
        self._fn["ln_fwd", x2.dtype](_p(x2), _p(weight), _p(bias), _p(y), _p(mean), _p(rstd), n, c, float(eps))
        return y, mean, rstd

    def layernorm_backward(self, g2, x2, mean, rstd, weight, need_dw, need_db):
        """g2, x2 (N, C), mean, rstd (N, 1), weight (C,) or None -> dx (N, C), dw (C,) or None, db (C,) or None."""
        n, c = g2.shape
        dx = np.empty_like(g2)
        dw = np.empty(c, g2.dtype) if need_dw else None
        db = np.empty(c, g2.dtype) if need_db else None
        self._fn["ln_bwd", g2.dtype](_p(g2), _p(x2), _p(mean), _p(rstd), _p(weight), _p(dx), _p(dw), _p(db), n, c)
        return dx, dw, db

    def softmax_(self, s, scale, causal=False, key_mask=None):
        """In place: s (…, Tq, Tk) <- softmax(s·scale) over allowed keys; returns s.
        causal: key j allowed for query i iff j <= i + Tk - Tq. key_mask: bool (B, Tk) for s (B, H, Tq, Tk),
        True = allowed. A row with no allowed key becomes zeros."""
        tq, tk = s.shape[-2], s.shape[-1]
        if key_mask is not None:
            b, h = s.shape[0], s.shape[1]
            km = np.ascontiguousarray(key_mask, dtype=np.bool_)
            if s.ndim != 4 or km.shape != (b, tk):
                raise ValueError(f"softmax_: key_mask of shape {km.shape} does not fit scores {s.shape}")
        else:
            b, h, km = 1, s.size // max(tq * tk, 1), None
        if s.size:
            self._fn["softmax", s.dtype](_p(s), b, h, tq, tk, int(bool(causal)), _p(km), float(scale))
        return s

    def attention_ds_(self, dp, p, scale):
        """In place: dp (…, Tk) <- p ∘ (dp − rowsum(dp ∘ p)) · scale; returns dp (then ds)."""
        tk = dp.shape[-1]
        if dp.size:
            self._fn["attn_ds", dp.dtype](_p(dp), _p(p), dp.size // tk, tk, float(scale))
        return dp

    def cross_entropy(self, logits, target, ignore_index):
        """logits (N, C), target (N,) -> (nll (N,), d = softmax − onehot (N, C)), ignored rows 0;
        None when a row's max is not finite (the caller's NumPy path handles those)."""
        n, c = logits.shape
        t = np.ascontiguousarray(target, dtype=np.int64)
        nll, d = np.empty(n, logits.dtype), np.empty_like(logits)
        bad = self._fn["cross_entropy", logits.dtype](_p(logits), _p(t), n, c, int(ignore_index), _p(nll), _p(d))
        return None if bad else (nll, d)

    def scatter_add_rows(self, out, idx, values):
        """out (V, C) += values (N, C) at rows idx (N,), in order; idx already in [0, V)."""
        i = np.ascontiguousarray(idx, dtype=np.int64)
        self._fn["scatter_add_rows", out.dtype](_p(out), _p(i), _p(values), i.size, out.shape[1])

    def qkv_attention_forward(self, qkv, n_head, causal, scale):
        """qkv (B, T, 3C) packed q|k|v -> y (B, T, C), lse (B, n_head, T). See attention_cpu.cpp."""
        b, t, c3 = qkv.shape
        c = c3 // 3
        y = np.empty((b, t, c), qkv.dtype)
        lse = np.empty((b, n_head, t), qkv.dtype)
        if qkv.size:
            self._fn["qkv_attn_fwd", qkv.dtype](_p(qkv), _p(y), _p(lse), b, n_head, t, c // n_head, int(bool(causal)),
                                                float(scale))
        return y, lse

    def qkv_attention_backward(self, qkv, y, lse, dy, n_head, causal, scale):
        """The gradient (B, T, 3C) of qkv, given y, lse from the forward and dy (B, T, C)."""
        b, t, c3 = qkv.shape
        dqkv = np.empty_like(qkv)
        if qkv.size:
            self._fn["qkv_attn_bwd", qkv.dtype](_p(qkv), _p(y), _p(lse), _p(dy), _p(dqkv), b, n_head, t,
                                                c3 // 3 // n_head, int(bool(causal)), float(scale))
        return dqkv

    def adam_(self, w, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
        """One Adam (L2 weight decay) or AdamW (decoupled) step in place on w, m, v."""
        lr, beta1, beta2, eps, weight_decay = (float(a) for a in (lr, beta1, beta2, eps, weight_decay))
        mode = (2 if decoupled else 1) if weight_decay else 0
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        self._fn["adam", w.dtype](_p(w), _p(grad), _p(m), _p(v), w.size, mode, 1.0 - lr * weight_decay,
                                  weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, 1.0 / bc2_sqrt,
                                  eps)

    # ---------------------------------------------------------------- quantized weights (quant_gemm.cpp)
    # x (M, K) float32, W (N, K), bias (N,) float32 or None -> y (M, N) float32 (written into `out`
    # if given: no allocation per decode step). isa: 0 portable, 1 AVX-512, 2 VNNI (q8a8) /
    # AVX512-BF16 dot (bf16); the caller picks one that quant_isa allows. All arrays C-contiguous.

    def _quant_call(self, name, isa, *args):
        if self._fn[name](*args) != 0:
            raise RuntimeError(f"{name}: isa {isa} is not compiled into this library (quant_isa={self.quant_isa})")

    @staticmethod
    def _out(out, m, n):
        """y (M, N) float32: a fresh array, or `out` (C-contiguous float32 of that shape) to write into."""
        if out is None:
            return np.empty((m, n), np.float32)
        if type(out) is not np.ndarray or out.dtype != np.float32 or out.shape != (m, n) or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {(m, n)}")
        return out

    def _bound(self, name, isa, args, arrays):
        """A zero-argument call of `name` on fixed pointers (a decode step reuses its buffers: the
        argument conversions cost about 5 µs a call, as much as a small GEMV). It holds `arrays`, so
        the memory its pointers name stays alive as long as it does."""
        need = {0: 0, 1: 1, 2: 2 if name in ("q8a8_matmul", "q8x24_matmul") else 4}.get(isa, 0)
        if self.quant_isa & need != need:
            raise RuntimeError(f"{name}: isa {isa} is not compiled into this library (quant_isa={self.quant_isa})")
        call = functools.partial(self._fn[name], *args)
        call.arrays = arrays
        return call

    def q8_matmul(self, x, w, scale, bias, group, isa, nthreads, out=None, bind=False):
        """W int8 (N, K), scale float32 (N, ceil(K / group)): W ≈ q · scale per row and group.
        bind=True (with `out`): returns a zero-argument callable that recomputes out from x's current
        contents (it holds every array it points to)."""
        (m, k), n = x.shape, w.shape[0]
        y = self._out(out, m, n)
        args = (_p(x), _p(w), _p(scale), _p(bias), _p(y), m, n, k, int(group), int(isa), int(nthreads))
        if bind:
            return self._bound("q8_matmul", isa, args, (x, w, scale, bias, y))
        self._quant_call("q8_matmul", isa, *args)
        return y

    def f32_matmul(self, x, w, bias, isa, nthreads, out=None, bind=False):
        """W float32 (N, K) on the quantized kernels' pool and tiles (isa 0 portable, 1 AVX-512).
        bind: as q8_matmul."""
        (m, k), n = x.shape, w.shape[0]
        y = self._out(out, m, n)
        args = (_p(x), _p(w), _p(bias), _p(y), m, n, k, int(isa), int(nthreads))
        if bind:
            return self._bound("f32_matmul", isa, args, (x, w, bias, y))
        self._quant_call("f32_matmul", isa, *args)
        return y

    def bf16_matmul(self, x, w_bits, bias, isa, nthreads, out=None, bind=False):
        """W bfloat16 (N, K) passed as its uint16 bits. bind: as q8_matmul."""
        (m, k), n = x.shape, w_bits.shape[0]
        y = self._out(out, m, n)
        args = (_p(x), _p(w_bits), _p(bias), _p(y), m, n, k, int(isa), int(nthreads))
        if bind:
            return self._bound("bf16_matmul", isa, args, (x, w_bits, bias, y))
        self._quant_call("bf16_matmul", isa, *args)
        return y

    def q8a8_matmul(self, x, w, scale, wsum, bias, group, isa, nthreads, keep_xq=False, out=None):
        """As q8_matmul with x quantized per row to int8 (exact int32 dot products); wsum int32 (N, G)
        = Σ_k q per group. Returns y, or (y, xq (M, K) int8, xs (M,) float32) with keep_xq."""
        (m, k), n = x.shape, w.shape[0]
        y = self._out(out, m, n)
        xs = np.empty(m, np.float32)
        xq = np.empty((m, k), np.int8) if keep_xq else None
        self._quant_call("q8a8_matmul", isa, _p(x), _p(w), _p(scale), _p(wsum), _p(bias), _p(y), m, n, k, int(group),
                         int(isa), int(nthreads), _p(xq), _p(xs))
        return (y, xq, xs) if keep_xq else y

    def q8x24_matmul(self, x, w, scale, wsum, bias, group, isa, nthreads, out=None, bind=False, keep_xd=False):
        """As q8_matmul with x rounded per row to 24-bit fixed point and exact int32 dot products of its
        digits (quant_gemm.cpp's q8x24); wsum int32 (N, G) = Σ_k q per group. isa 0 portable (the same
        digits and arithmetic), 2 VNNI. keep_xd: returns (y, xd (M, 2) float64: each row's step d and
        range M). bind: as q8_matmul."""
        (m, k), n = x.shape, w.shape[0]
        y = self._out(out, m, n)
        xd = np.empty((m, 2), np.float64) if keep_xd else None
        args = (_p(x), _p(w), _p(scale), _p(wsum), _p(bias), _p(y), m, n, k, int(group), int(isa), int(nthreads),
                _p(xd))
        if bind:
            return self._bound("q8x24_matmul", isa, args, (x, w, scale, wsum, bias, y))
        self._quant_call("q8x24_matmul", isa, *args)
        return (y, xd) if keep_xd else y

    def decode_attention(self, q, k, v, tk, scale, nthreads, out, bind=False, isa=1):
        """One decode step's attention (quant_gemm.cpp): q (B, nh, hs) float32 with unit strides
        inside each batch row (a view into qkv is fine); k, v (B, nh, block, hs) C-contiguous float32
        cache buffers holding tk <= block keys; out (B, nh, hs)-sized C-contiguous float32.
        out[b, h] = softmax(scale · q[b, h] k[b, h, :tk]ᵀ) v[b, h, :tk]. bind=True: returns f(tk) doing
        the same on these arrays for any 1 <= tk <= block (not checked again: the caller's invariant).
        isa 1: the AVX-512 loop where hs = 64 and the CPU has it, 0: the portable loop."""
        B, nh, block, hs = k.shape
        f32 = np.dtype(np.float32)
        ok = (q.dtype == f32 and k.dtype == f32 and v.dtype == f32 and out.dtype == f32 and q.shape == (B, nh, hs)
              and v.shape == k.shape and k.flags.c_contiguous and v.flags.c_contiguous and out.flags.c_contiguous
              and out.size == B * nh * hs and q.strides[1:] == (4 * hs, 4) and 1 <= tk <= block)
        if not ok:
            raise ValueError(f"decode_attention: q {q.shape}, k {k.shape}, v {v.shape}, out {out.shape}, tk {tk}: "
                             "want float32 q (B, nh, hs) with unit inner strides, C-contiguous k, v (B, nh, block, "
                             "hs), out of B*nh*hs elements, 1 <= tk <= block")
        f, head, tail = self._fn["decode_attention"], (_p(q), q.strides[0] // 4, _p(k), _p(v), _p(out), B, nh), \
            (hs, block, float(scale), int(nthreads), int(isa))
        if bind:
            return lambda tk, _keep=(q, k, v, out): f(*head, tk, *tail)
        f(*head, int(tk), *tail)
        return out

