"""Launchers for the fused attention kernels in attention.cu (forward, and backward in two kernels).

    attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None) -> (o, lse)
    attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None) -> (dq, dk, dv)

q (B, H, Tq, d), k and v (B, H, Tk, d), C-contiguous, one dtype (float32 or float64), 16 <= d <= 128;
key_mask None or bool (B, Tk), True = attend; is_causal is bottom-right aligned (see attention.cu).
Arrays decide where the kernels run: cupy arrays on the GPU (CuPy RawModule, NVRTC), numpy
arrays on the CPU emulator (kernels/emulate). Bad input raises before any launch.

Every buffer a launcher allocates is recorded in ALLOCATIONS as (name, shape), so a test can
prove no (Tq, Tk) buffer ever exists: the launchers allocate o, lse, dq, dk, dv and Drow only.
"""
from pathlib import Path

import numpy as np

from kernels.launch import array_module, is_cupy_array

SOURCE = Path(__file__).with_name("attention.cu")
HEAD_DIMS = (16, 32, 64, 128)  # compile-time D; a runtime d runs in the smallest D >= d

# Tile configurations, the single source of truth for the names compiled, checked and launched.
#   fwd and dq: (BQ, BK, G, R), one block per query tile of BQ rows, (BQ/R)*G threads;
#   dkdv:       (BK, BQ, G, R), one block per key tile of BK rows,   (BK/R)*G threads.
# Chosen so static shared memory stays under 48 KiB and ptxas reports no spills on sm_80/sm_90.
CONFIGS = {
    ("float", 16): {"fwd": (64, 64, 4, 2), "dq": (64, 64, 4, 2), "dkdv": (64, 32, 4, 2)},
    ("float", 32): {"fwd": (64, 64, 4, 2), "dq": (64, 32, 4, 2), "dkdv": (64, 32, 4, 2)},
    ("float", 64): {"fwd": (64, 32, 4, 2), "dq": (32, 32, 8, 2), "dkdv": (32, 32, 8, 2)},
    ("float", 128): {"fwd": (32, 16, 8, 2), "dq": (16, 16, 8, 1), "dkdv": (16, 16, 8, 1)},
    ("double", 16): {"fwd": (64, 32, 4, 2), "dq": (64, 32, 4, 2), "dkdv": (32, 32, 8, 2)},
    ("double", 32): {"fwd": (32, 32, 8, 2), "dq": (32, 32, 8, 2), "dkdv": (32, 16, 8, 2)},
    ("double", 64): {"fwd": (32, 16, 8, 2), "dq": (16, 16, 8, 1), "dkdv": (16, 16, 8, 1)},
    ("double", 128): {"fwd": (16, 8, 8, 1), "dq": (8, 8, 8, 1), "dkdv": (8, 8, 8, 1)},
}
KERNELS = {"fwd": "attention_fwd", "dq": "attention_bwd_dq", "dkdv": "attention_bwd_dkdv"}
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

ALLOCATIONS = []  # (name, shape) of every buffer allocated by a launcher, appended per call


def kernel_name(kind, ctype, D):
    """Name expression of one instantiation, e.g. 'attention_fwd<float, 64, 64, 32, 4, 2>'."""
    a, b, g, r = CONFIGS[(ctype, D)][kind]
    return f"{KERNELS[kind]}<{ctype}, {D}, {a}, {b}, {g}, {r}>"


def name_expressions():
    """Every shipped instantiation: 3 kernels x {float, double} x HEAD_DIMS."""
    return [kernel_name(kind, ctype, D) for (ctype, D) in CONFIGS for kind in KERNELS]


def threads(kind, ctype, D):
    rows, _, g, r = CONFIGS[(ctype, D)][kind]
    return rows // r * g


def padded_head_dim(d):
    for D in HEAD_DIMS:
        if d <= D:
            return D
    raise ValueError(f"attention kernels support head dims 16..128, got d={d}")


# ---------------------------------------------------------------------------------------------
# Input checks: everything is validated before any launch.

def _is_array(x):
    return isinstance(x, np.ndarray) or is_cupy_array(x)


def _check_inputs(q, k, v, key_mask, extra=()):
    named = [("q", q), ("k", k), ("v", v), *extra]
    for name, a in named:
        if not _is_array(a):
            raise TypeError(f"attention: {name} must be a numpy or cupy array, got {type(a).__name__}")
    kinds = {type(a) for _, a in named}
    if len(kinds) != 1:
        raise TypeError("attention: q, k, v (and o, lse, do) must all be numpy or all cupy arrays, "
                        f"got {sorted(t.__module__ + '.' + t.__name__ for t in kinds)}")
    if q.dtype not in _CTYPE:
        raise TypeError(f"attention: q must be float32 or float64, got {q.dtype}")
    for name, a in named:
        if a.dtype != q.dtype:
            raise TypeError(f"attention: {name} has dtype {a.dtype} but q has {q.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"attention: {name} must be C-contiguous (call ascontiguousarray first)")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be 4-d (B, H, T, d), got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    B, H, Tq, d = q.shape
    Tk = k.shape[2]
    if k.shape != (B, H, Tk, d) or v.shape != k.shape:
        raise ValueError(f"attention: k and v must be (B, H, Tk, d) = (B={B}, H={H}, Tk, d={d}) like q, "
                         f"got k {k.shape}, v {v.shape}")
    if min(B, H, Tq, Tk) < 1:
        raise ValueError(f"attention: empty input, q {q.shape}, k {k.shape}")
    if not 16 <= d <= 128:
        raise ValueError(f"attention kernels support head dims 16..128, got d={d}")
    if max(B * H * Tq * d, B * H * Tk * d) >= 2 ** 31:
        raise ValueError("attention: more than 2**31 elements per tensor is not supported")
    for name, a in extra:
        want = (B, H, Tq) if name == "lse" else (B, H, Tq, d)
        if a.shape != want:
            raise ValueError(f"attention: {name} must have shape {want}, got {a.shape}")
    if key_mask is not None:
        if type(key_mask) is not type(q):
            raise TypeError(f"attention: key_mask must be a {type(q).__name__} like q, "
                            f"got {type(key_mask).__name__}")
        if key_mask.dtype != np.bool_:
            raise TypeError(f"attention: key_mask must be bool (True = attend), got {key_mask.dtype}")
        if key_mask.shape != (B, Tk):
            raise ValueError(f"attention: key_mask must have shape (B, Tk) = {(B, Tk)}, got {key_mask.shape}")
        if not key_mask.flags.c_contiguous:
            raise ValueError("attention: key_mask must be C-contiguous")
    return B, H, Tq, Tk, d


def _scale(scale, d, dtype):
    if scale is None:
        scale = 1.0 / float(d) ** 0.5
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")
    return dtype.type(scale)


def _alloc(xp, name, shape, dtype):
    ALLOCATIONS.append((name, tuple(shape)))
    return xp.empty(shape, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Launch: kernels/launch.py picks CuPy (cupy arrays) or the CPU emulator (numpy arrays) and
# compiles the instantiations registered for attention.cu in kernels/registry.py.

def _launch(name, grid, block, args):
    from kernels import launch
    launch.launch(SOURCE.name, name, grid, block, args)


def attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None):
    """Fused attention forward: returns o (B, H, Tq, d) and lse (B, H, Tq), both q.dtype."""
    B, H, Tq, Tk, d = _check_inputs(q, k, v, key_mask)
    xp = array_module(q)
    ctype, D = _CTYPE[q.dtype], padded_head_dim(d)
    sc = _scale(scale, d, q.dtype)
    o = _alloc(xp, "o", (B, H, Tq, d), q.dtype)
    lse = _alloc(xp, "lse", (B, H, Tq), q.dtype)
    has_mask = np.int32(key_mask is not None)
    bq = CONFIGS[(ctype, D)]["fwd"][0]
    grid = B * H * (-(-Tq // bq))
    _launch(kernel_name("fwd", ctype, D), grid, threads("fwd", ctype, D),
            (q, k, v, key_mask, o, lse, np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), sc,
             np.int32(bool(is_causal)), has_mask))
    return o, lse


def attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None):
    """Fused attention backward for the loss sum(o * do): returns dq, dk, dv (q.dtype).

    o and lse are the forward's outputs. Two launches, no atomics (bit-identical run to run):
    attention_bwd_dq writes dq and Drow = rowsum(do * o), then attention_bwd_dkdv writes dk, dv.
    """
    B, H, Tq, Tk, d = _check_inputs(q, k, v, key_mask, extra=(("o", o), ("lse", lse), ("do", do)))
    xp = array_module(q)
    ctype, D = _CTYPE[q.dtype], padded_head_dim(d)
    sc = _scale(scale, d, q.dtype)
    dq = _alloc(xp, "dq", (B, H, Tq, d), q.dtype)
    dk = _alloc(xp, "dk", (B, H, Tk, d), q.dtype)
    dv = _alloc(xp, "dv", (B, H, Tk, d), q.dtype)
    drow = _alloc(xp, "drow", (B, H, Tq), q.dtype)
    has_mask = np.int32(key_mask is not None)
    tail = (np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), sc, np.int32(bool(is_causal)), has_mask)
    bq = CONFIGS[(ctype, D)]["dq"][0]
    _launch(kernel_name("dq", ctype, D), B * H * (-(-Tq // bq)), threads("dq", ctype, D),
            (q, k, v, o, lse, do, key_mask, dq, drow) + tail)
    bk = CONFIGS[(ctype, D)]["dkdv"][0]
    _launch(kernel_name("dkdv", ctype, D), B * H * (-(-Tk // bk)), threads("dkdv", ctype, D),
            (q, k, v, lse, drow, do, key_mask, dk, dv) + tail)
    return dq, dk, dv

