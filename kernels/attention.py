"""The attention family: kernels/attention.cu's NumPy reference, launchers (forward, and backward in
two kernels), kernel versions, validation cases and bench hooks.

    attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None) -> (o, lse)
    attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None) -> (dq, dk, dv)
    attention_forward_ref, attention_backward_ref: the definitions the kernels are validated against

q (B, H, Tq, d), k and v (B, H, Tk, d), C-contiguous, one dtype (float32 or float64), 16 <= d <= 128;
key_mask None or bool (B, Tk), True = attend; is_causal is bottom-right aligned (see attention.cu).
Arrays decide where the kernels run: cupy arrays on the GPU (CuPy RawModule, NVRTC), numpy
arrays on the CPU emulator (kernels/emulate). Bad input raises before any launch. A kernel version
is a Kernel line in KERNELS at the bottom (kernels/registry.py collects it), with its roles and
its entry in TILES; `kernels=` runs a version's roles instead of the default ones.

Every buffer a launcher allocates is recorded in ALLOCATIONS as (name, shape), so a test can
prove no (Tq, Tk) buffer ever exists: the launchers allocate o, lse, dq, dk, dv and Drow only.
"""
import numpy as np

from minigrad.kernels import runtime
from minigrad.kernels.family import Kernel, Operation, instantiations
from minigrad.kernels.runtime import array_module, is_cupy_array

CU = "attention.cu"

HEAD_DIMS = (16, 32, 64, 128)  # compile-time D; a runtime d runs in the smallest D >= d

# Tile configurations, (scalar type, D) -> (BQ, BK, G, R): the single source of truth for what is
# compiled (KERNELS' templates -> PROGRAM, and the NVRTC check through the registry) and launched.
# attention_fwd and attention_bwd_dq run one block of (BQ/R)*G threads per query tile of BQ rows;
# attention_bwd_dkdv one block of (BK/R)*G threads per key tile of BK rows. Chosen so static shared
# memory stays under 48 KiB with no spills on sm_80/sm_90 (`minigrad kernels check`).
FORWARD_TILES = {
    ("float", 16): (64, 64, 4, 2), ("float", 32): (64, 64, 4, 2),
    ("float", 64): (64, 32, 4, 2), ("float", 128): (32, 16, 8, 2),
    ("double", 16): (64, 32, 4, 2), ("double", 32): (32, 32, 8, 2),
    ("double", 64): (32, 16, 8, 2), ("double", 128): (16, 8, 8, 1),
}
BACKWARD_TILES = {   # shared by the two backward kernels
    ("float", 16): (32, 64, 4, 2), ("float", 32): (32, 64, 4, 2),
    ("float", 64): (32, 32, 8, 2), ("float", 128): (16, 16, 8, 1),
    ("double", 16): (32, 32, 8, 2), ("double", 32): (16, 32, 8, 1),
    ("double", 64): (16, 16, 8, 1), ("double", 128): (8, 8, 8, 1),
}
# The __global__ functions each launcher role uses by default (kernels= selects another version)
# and the tiles each function is instantiated with (a new version adds its own entry).
FORWARD_ROLES = {"forward": "attention_fwd"}
BACKWARD_ROLES = {"dq": "attention_bwd_dq", "dkdv": "attention_bwd_dkdv"}
TILES = {"attention_fwd": FORWARD_TILES, "attention_bwd_dq": BACKWARD_TILES, "attention_bwd_dkdv": BACKWARD_TILES}
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

ALLOCATIONS = []  # (name, shape) of every buffer allocated by a launcher, appended per call


def templates(tiles):
    """Kernel template argument lists, e.g. 'float, 64, 64, 32, 4, 2' for every entry of tiles."""
    return tuple(", ".join([ct, str(D), *map(str, cfg)]) for (ct, D), cfg in tiles.items())


def _kernel(fn, role, ctype, D):
    """(name expression, rows per block, threads per block) of one launch."""
    if fn not in TILES:
        raise KeyError(f"attention: no tile table for kernel {fn!r} (known: {', '.join(TILES)})")
    bq, bk, g, r = TILES[fn][(ctype, D)]
    rows = bk if role == "dkdv" else bq
    return f"{fn}<{ctype}, {D}, {bq}, {bk}, {g}, {r}>", rows, rows // r * g


def padded_head_dim(d):
    for D in HEAD_DIMS:
        if d <= D:
            return D
    raise ValueError(f"attention kernels support head dims 16..128, got d={d}")


# ---------------------------------------------------------------------------------------------
# Reference. Same semantics as the kernels and as the NumPy path of F.scaled_dot_product_attention:
#   o (B, H, Tq, d); lse (B, H, Tq); query i may attend key j iff key_mask[b, j] (when given) and,
#   when causal, j <= i + (Tk - Tq). A query row with no attendable key gets o = 0, lse = -inf and
#   zero gradients. It materialises the (Tq, Tk) score matrix: for checking, not for speed.
#   Works on numpy or cupy arrays (the array module is taken from q).

def allowed_mask(xp, B, Tq, Tk, key_mask=None, is_causal=False):
    """Bool (B or 1, 1, Tq, Tk): True where query i may attend key j."""
    allowed = xp.ones((1, 1, Tq, Tk), dtype=bool)
    if is_causal:
        i = xp.arange(Tq)[:, None]
        j = xp.arange(Tk)[None, :]
        allowed = allowed & (j <= i + (Tk - Tq))[None, None]
    if key_mask is not None:
        allowed = allowed & xp.asarray(key_mask, dtype=bool)[:, None, None, :]
    return allowed


def attention_probs(q, k, key_mask=None, is_causal=False, scale=None):
    """P (B, H, Tq, Tk), lse (B, H, Tq) and the scale used; fully masked rows give P = 0, lse = -inf."""
    xp = array_module(q)
    B, _, Tq, d = q.shape
    Tk = k.shape[2]
    if scale is None:
        scale = 1.0 / float(d) ** 0.5
    allowed = allowed_mask(xp, B, Tq, Tk, key_mask, is_causal)
    s = xp.where(allowed, (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale), -xp.inf)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xp.where(allowed, xp.exp(s - m), 0)
    total = e.sum(axis=-1, keepdims=True)
    p = e / xp.where(total > 0, total, 1)
    with_keys = total[..., 0] > 0
    lse = xp.where(with_keys, xp.log(xp.where(with_keys, total[..., 0], 1)) + m[..., 0], -xp.inf)
    return p.astype(q.dtype), lse.astype(q.dtype), scale


def attention_forward_ref(q, k, v, key_mask=None, is_causal=False, scale=None):
    """Returns (o, lse)."""
    p, lse, _ = attention_probs(q, k, key_mask, is_causal, scale)
    return p @ v, lse


def attention_backward_ref(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None):
    """Returns (dq, dk, dv) for the loss sum(o * do). lse is unused: P is recomputed here."""
    p, _, scale = attention_probs(q, k, key_mask, is_causal, scale)
    dv = p.swapaxes(-1, -2) @ do
    dp = do @ v.swapaxes(-1, -2)
    drow = (do * o).sum(axis=-1, keepdims=True)
    ds = p * (dp - drow)
    dq = (ds @ k) * q.dtype.type(scale)
    dk = (ds.swapaxes(-1, -2) @ q) * q.dtype.type(scale)
    return dq, dk, dv


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
# Launchers: PROGRAM (bottom) runs the instantiations on CuPy (cupy arrays) or the CPU emulator
# (numpy arrays).

def attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None, kernels=None):
    """Fused attention forward: returns o (B, H, Tq, d) and lse (B, H, Tq), both q.dtype.

    kernels: {"forward": __global__ name} to run another registered version (default FORWARD_ROLES).
    """
    B, H, Tq, Tk, d = _check_inputs(q, k, v, key_mask)
    xp = array_module(q)
    ctype, D = _CTYPE[q.dtype], padded_head_dim(d)
    sc = _scale(scale, d, q.dtype)
    o = _alloc(xp, "o", (B, H, Tq, d), q.dtype)
    lse = _alloc(xp, "lse", (B, H, Tq), q.dtype)
    has_mask = np.int32(key_mask is not None)
    name, rows, nt = _kernel((kernels or FORWARD_ROLES)["forward"], "forward", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tq // rows)), nt,
                   (q, k, v, key_mask, o, lse, np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), sc,
                    np.int32(bool(is_causal)), has_mask))
    return o, lse


def attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None, kernels=None):
    """Fused attention backward for the loss sum(o * do): returns dq, dk, dv (q.dtype).

    o and lse are the forward's outputs. Two launches, no atomics (bit-identical run to run):
    the "dq" kernel writes dq and Drow = rowsum(do * o), then the "dkdv" kernel writes dk, dv.
    kernels: {"dq": name, "dkdv": name} to run another registered version (default BACKWARD_ROLES).
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
    roles = kernels or BACKWARD_ROLES
    name, rows, nt = _kernel(roles["dq"], "dq", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tq // rows)), nt, (q, k, v, o, lse, do, key_mask, dq, drow) + tail)
    name, rows, nt = _kernel(roles["dkdv"], "dkdv", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tk // rows)), nt, (q, k, v, lse, drow, do, key_mask, dk, dv) + tail)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------
# Workbench hooks (`minigrad kernels validate | bench`, kernels/attention_bench.py).
# A case is (B, H, Tq, Tk, d, is_causal, masked). Validate cases leave every query row at least
# one key (validate compares max|out - ref|, and an empty row's lse is -inf on both sides), and
# Tk > 1 (with one key dq = dk = 0 exactly, so a relative error means nothing).

VALIDATE_CASES = (
    (1, 1, 1, 7, 16, False, False), (2, 2, 7, 7, 40, True, True), (1, 2, 64, 65, 64, True, False),
    (1, 2, 65, 64, 128, False, True), (1, 1, 7, 200, 32, True, True), (1, 1, 200, 200, 64, True, True),
)
BENCH_CASES = (
    (4, 16, 1024, 1024, 64, True, False), (4, 16, 1024, 1024, 64, False, False),
    (2, 16, 2048, 2048, 64, True, False), (1, 16, 4096, 4096, 64, True, False),
    (4, 16, 1024, 1024, 128, True, False),
)
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def make_inputs(xp, rng, case, dtype):
    B, H, Tq, Tk, d, causal, masked = case
    arrays = {"q": (B, H, Tq, d), "k": (B, H, Tk, d), "v": (B, H, Tk, d), "do": (B, H, Tq, d)}
    out = {n: xp.asarray(rng.standard_normal(s), dtype=dtype) for n, s in arrays.items()}
    key_mask = None
    if masked:
        key_mask = rng.random((B, Tk)) > 0.3
        key_mask[:, 0] = True
        key_mask = xp.asarray(key_mask)
    out.update(key_mask=key_mask, is_causal=causal)
    return out


def describe(case):
    B, H, Tq, Tk, d, causal, masked = case
    return f"B{B} H{H} Tq{Tq} Tk{Tk} d{d}" + (" causal" if causal else "") + (" mask" if masked else "")


def _fwd_run(kernel, i):
    o, lse = attention_forward(i["q"], i["k"], i["v"], i["key_mask"], i["is_causal"], kernels=kernel.roles)
    return {"o": o, "lse": lse}


def _fwd_ref(i):
    o, lse = attention_forward_ref(i["q"], i["k"], i["v"], i["key_mask"], i["is_causal"])
    return {"o": o, "lse": lse}


def backward_inputs(xp, rng, case, dtype):
    """make_inputs plus the forward's saved o and lse (from the reference, so the backward is
    validated on its own and its bench times the backward alone)."""
    i = make_inputs(xp, rng, case, dtype)
    saved = _fwd_ref(i)
    i.update(o=saved["o"], lse=saved["lse"])
    return i


def _bwd_run(kernel, i):
    dq, dk, dv = attention_backward(i["q"], i["k"], i["v"], i["o"], i["lse"], i["do"], i["key_mask"],
                                    i["is_causal"], kernels=kernel.roles)
    return {"dq": dq, "dk": dk, "dv": dv}


def _bwd_ref(i):
    dq, dk, dv = attention_backward_ref(i["q"], i["k"], i["v"], i["o"], i["lse"], i["do"], i["key_mask"],
                                        i["is_causal"])
    return {"dq": dq, "dk": dk, "dv": dv}


def _fwd_bytes(case, dtype):
    B, H, Tq, Tk, d, _, masked = case   # read q, k, v (and the mask); write o, lse
    return np.dtype(dtype).itemsize * B * H * (2 * Tq * d + 2 * Tk * d + Tq) + (B * Tk if masked else 0)


def _bwd_bytes(case, dtype):
    B, H, Tq, Tk, d, _, masked = case   # read q, k, v, o, do, lse; write dq, dk, dv, Drow (and read it)
    return np.dtype(dtype).itemsize * B * H * (4 * Tq * d + 4 * Tk * d + 3 * Tq) + (B * Tk if masked else 0)


_COMMON = {"cases": VALIDATE_CASES, "bench_cases": BENCH_CASES, "tolerance": TOLERANCE, "describe": describe}
FORWARD = Operation(run=_fwd_run, reference=_fwd_ref, make_inputs=make_inputs, bytes_moved=_fwd_bytes,
                    unfused=_fwd_ref, **_COMMON)
BACKWARD = Operation(run=_bwd_run, reference=_bwd_ref, make_inputs=backward_inputs, bytes_moved=_bwd_bytes,
                     unfused=_bwd_ref, **_COMMON)

# ---------------------------------------------------------------------------------------------
# Kernel versions: one line per version (its roles, its tiles' template arguments); check,
# validate and bench run every line side by side. PROGRAM compiles every instantiation listed here.
KERNELS = (
    Kernel("attention_forward", CU, FORWARD_ROLES, FORWARD, templates(FORWARD_TILES)),
    Kernel("attention_backward", CU, BACKWARD_ROLES, BACKWARD, templates(BACKWARD_TILES)),
)
PROGRAM = runtime.Program(CU, instantiations(KERNELS, CU))
