"""The attention family: NumPy reference, launchers (forward, and backward in two kernels), kernel
versions, validation cases and bench hooks of kernels/attention.cu (version 1) and
kernels/attention_v2.cu (version 2, tensor cores).

    attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None, version=None) -> (o, lse)
    attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None, version=None)
        -> (dq, dk, dv)
    attention_forward_ref, attention_backward_ref: the definitions the kernels are validated against

q (B, H, Tq, d), k and v (B, H, Tk, d), C-contiguous, one dtype; key_mask None or bool (B, Tk), True =
attend; is_causal is bottom-right aligned (see attention.cu). The dtype picks the version:
    version 1 (attention.cu)     float32, float64; 16 <= d <= 128; o, lse, dq, dk, dv in q's dtype
    version 2 (attention_v2.cu)  float16, bfloat16 (ml_dtypes.bfloat16, or its bits as uint16);
                                 1 <= d <= 128; o, dq, dk, dv in q's dtype, lse float32; mma.sync
                                 tensor cores, sm_80 or later on a GPU
`version=` asks for one (an error if it cannot take the dtype); None takes the only one that can.
Arrays decide where the kernels run: cupy arrays on the GPU (CuPy RawModule, NVRTC), numpy
arrays on the CPU emulator (kernels/emulate). Bad input raises before any launch. A kernel version
is a Kernel line in KERNELS at the bottom (kernels/registry.py collects it), with its roles and
its entry in TILES (version 1) or V2_TILES; `kernels=` runs a version's roles instead of the
default ones.

Every buffer a launcher allocates is recorded in ALLOCATIONS as (name, shape), so a test can
prove no (Tq, Tk) buffer ever exists: the launchers allocate o, lse, dq, dk, dv and Drow only.
"""
import numpy as np

from minigrad.kernels import dtypes, runtime
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

# Version 2 (attention_v2.cu): X in {mg_half, mg_bf16}, D in {64, 128} (d <= 64 runs in 64, else 128).
# (X, D) -> (BK, NW): attention_v2_fwd runs NW warps (16 NW query rows) per block with key tiles of BK.
# (X, D) -> (B2, NW) for both backward kernels: attention_v2_bwd_dq like the forward with key tiles of
# B2; attention_v2_bwd_dkdv NW warps (16 NW keys) per block with query tiles of B2. No spills on
# sm_80/sm_90 (`minigrad kernels check`); dynamic shared memory below 99 KiB (sm_86's opt-in limit).
V2_HEAD_DIMS = (64, 128)
V2_CTYPE = {"half": "mg_half", "bf16": "mg_bf16"}
V2_FORWARD_TILES = {(c, D): (64, 4) for c in V2_CTYPE.values() for D in V2_HEAD_DIMS}
V2_BACKWARD_TILES = {(c, 64): (64, 4) for c in V2_CTYPE.values()} | {(c, 128): (32, 4) for c in V2_CTYPE.values()}
V2_FORWARD_ROLES = {"forward": "attention_v2_fwd"}
V2_BACKWARD_ROLES = {"dq": "attention_v2_bwd_dq", "dkdv": "attention_v2_bwd_dkdv"}
V2_TILES = {"attention_v2_fwd": V2_FORWARD_TILES, "attention_v2_bwd_dq": V2_BACKWARD_TILES,
            "attention_v2_bwd_dkdv": V2_BACKWARD_TILES}
CU_V2 = "attention_v2.cu"
VERSIONS = {1: ("float", "double"), 2: ("half", "bf16")}  # the scalar kinds each version takes

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


def _kernel_v2(fn, role, ctype, D):
    """(name expression, rows per block, threads per block, dynamic shared bytes) of a version-2 launch."""
    if fn not in V2_TILES:
        raise KeyError(f"attention: no version-2 tile table for kernel {fn!r} (known: {', '.join(V2_TILES)})")
    b2, nw = V2_TILES[fn][(ctype, D)]
    rows, ds = 16 * nw, D + 8
    smem = {"forward": 2 * ds * (rows + 4 * b2), "dq": 2 * ds * (2 * rows + 4 * b2),
            "dkdv": 2 * ds * (2 * rows + 4 * b2) + 4 * 4 * b2}[role]
    return f"{fn}<{ctype}, {D}, {b2}, {nw}>", rows, 32 * nw, smem


def launch_config(name):
    """(threads per block, dynamic shared bytes) of an instantiation, for the occupancy column of
    `minigrad kernels check` (version 1 uses static shared memory only)."""
    fn, _, args = name.partition("<")
    parts = [a.strip() for a in args.rstrip(">").split(",")]
    if fn in V2_TILES:
        role = {"attention_v2_fwd": "forward", "attention_v2_bwd_dq": "dq", "attention_v2_bwd_dkdv": "dkdv"}[fn]
        _, _, nt, smem = _kernel_v2(fn, role, parts[0], int(parts[1]))
        return nt, smem
    bq, bk, g, r = map(int, parts[2:6])
    rows = bk if fn == "attention_bwd_dkdv" else bq
    return rows // r * g, 0


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


def choose_version(q, version=None, kernels=None):
    """The kernel version for q's dtype: `version` if given and able to take it, else the one that can
    (1 for float32/float64, 2 for float16/bfloat16); `kernels` (a version's roles) decides first.
    Version 2 on a GPU needs compute capability 8.0 or later."""
    if kernels is not None:
        fns = set(kernels.values())
        version = 2 if fns & set(V2_TILES) else 1
    if not _is_array(q):
        raise TypeError(f"attention: q must be a numpy or cupy array, got {type(q).__name__}")
    kind = dtypes.kind(q)
    if kind not in ("float", "double", "half", "bf16"):
        got = q.dtype
        raise TypeError(f"attention: q must be float32 or float64 (version 1) or float16 or bfloat16 (version 2), "
                        f"got {got}")
    if version is None:
        version = 1 if kind in VERSIONS[1] else 2
    if version not in VERSIONS:
        raise ValueError(f"attention: version must be 1 or 2, got {version!r}")
    if kind not in VERSIONS[version]:
        takes = {1: "float32 and float64", 2: "float16 and bfloat16"}[version]
        raise TypeError(f"attention: version {version} takes {takes}, got {dtypes.name(q.dtype)}")
    if version == 2 and is_cupy_array(q):
        major = _compute_capability()[0]
        if major < 8:
            raise RuntimeError(f"attention: version 2 (mma.sync bf16/fp16 tensor cores) needs compute capability "
                               f"8.0 or later; this GPU is {major}.x")
    return version


def _compute_capability():
    import cupy

    cc = cupy.cuda.Device().compute_capability
    return int(cc[:-1]), int(cc[-1])


def _check_inputs(q, k, v, key_mask, extra=(), version=1):
    named = [("q", q), ("k", k), ("v", v), *extra]
    for name, a in named:
        if not _is_array(a):
            raise TypeError(f"attention: {name} must be a numpy or cupy array, got {type(a).__name__}")
    kinds = {type(a) for _, a in named}
    if len(kinds) != 1:
        raise TypeError("attention: q, k, v (and o, lse, do) must all be numpy or all cupy arrays, "
                        f"got {sorted(t.__module__ + '.' + t.__name__ for t in kinds)}")
    for name, a in named:
        want = np.dtype(np.float32) if name == "lse" and version == 2 else q.dtype
        if a.dtype != want:
            whose = "version 2's lse is float32" if name == "lse" and version == 2 else f"q has {q.dtype}"
            raise TypeError(f"attention: {name} has dtype {a.dtype} but {whose}")
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
    lo = 16 if version == 1 else 1
    if not lo <= d <= 128:
        raise ValueError(f"attention kernels support head dims {lo}..128, got d={d} (version {version}; "
                         f"version 2 takes 1..128)")
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

def attention_forward(q, k, v, key_mask=None, is_causal=False, scale=None, kernels=None, version=None):
    """Fused attention forward: returns o (B, H, Tq, d) in q's dtype and lse (B, H, Tq): q's dtype in
    version 1, float32 in version 2 (the version follows q's dtype, see choose_version).

    kernels: {"forward": __global__ name} to run another registered version (default FORWARD_ROLES,
    V2_FORWARD_ROLES for half types).
    """
    version = choose_version(q, version, kernels)
    B, H, Tq, Tk, d = _check_inputs(q, k, v, key_mask, version=version)
    xp = array_module(q)
    has_mask = np.int32(key_mask is not None)
    o = _alloc(xp, "o", (B, H, Tq, d), q.dtype)
    if version == 2:
        ctype, D = V2_CTYPE[dtypes.kind(q)], _v2_head_dim(d)
        lse = _alloc(xp, "lse", (B, H, Tq), np.float32)
        name, rows, nt, smem = _kernel_v2((kernels or V2_FORWARD_ROLES)["forward"], "forward", ctype, D)
        PROGRAM_V2.launch(name, B * H * (-(-Tq // rows)), nt,
                          (q, k, v, key_mask, o, lse, np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d),
                           _scale(scale, d, np.dtype(np.float32)), np.int32(bool(is_causal)), has_mask),
                          shared_mem=smem, max_shared=max(smem, runtime.DEFAULT_SHARED_LIMIT))
        return o, lse
    ctype, D = _CTYPE[q.dtype], padded_head_dim(d)
    sc = _scale(scale, d, q.dtype)
    lse = _alloc(xp, "lse", (B, H, Tq), q.dtype)
    name, rows, nt = _kernel((kernels or FORWARD_ROLES)["forward"], "forward", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tq // rows)), nt,
                   (q, k, v, key_mask, o, lse, np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), sc,
                    np.int32(bool(is_causal)), has_mask))
    return o, lse


def attention_backward(q, k, v, o, lse, do, key_mask=None, is_causal=False, scale=None, kernels=None,
                       version=None):
    """Fused attention backward for the loss sum(o * do): returns dq, dk, dv (q's dtype).

    o and lse are the forward's outputs (lse float32 in version 2). Two launches, no atomics
    (bit-identical run to run): the "dq" kernel writes dq and Drow = rowsum(do * o), then the
    "dkdv" kernel writes dk, dv.
    kernels: {"dq": name, "dkdv": name} to run another registered version (default BACKWARD_ROLES,
    V2_BACKWARD_ROLES for half types).
    """
    version = choose_version(q, version, kernels)
    B, H, Tq, Tk, d = _check_inputs(q, k, v, key_mask, extra=(("o", o), ("lse", lse), ("do", do)), version=version)
    xp = array_module(q)
    dq = _alloc(xp, "dq", (B, H, Tq, d), q.dtype)
    dk = _alloc(xp, "dk", (B, H, Tk, d), q.dtype)
    dv = _alloc(xp, "dv", (B, H, Tk, d), q.dtype)
    has_mask = np.int32(key_mask is not None)
    if version == 2:
        ctype, D = V2_CTYPE[dtypes.kind(q)], _v2_head_dim(d)
        drow = _alloc(xp, "drow", (B, H, Tq), np.float32)
        tail = (np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), _scale(scale, d, np.dtype(np.float32)),
                np.int32(bool(is_causal)), has_mask)
        roles = kernels or V2_BACKWARD_ROLES
        name, rows, nt, smem = _kernel_v2(roles["dq"], "dq", ctype, D)
        PROGRAM_V2.launch(name, B * H * (-(-Tq // rows)), nt, (q, k, v, o, lse, do, key_mask, dq, drow) + tail,
                          shared_mem=smem, max_shared=max(smem, runtime.DEFAULT_SHARED_LIMIT))
        name, rows, nt, smem = _kernel_v2(roles["dkdv"], "dkdv", ctype, D)
        PROGRAM_V2.launch(name, B * H * (-(-Tk // rows)), nt, (q, k, v, lse, drow, do, key_mask, dk, dv) + tail,
                          shared_mem=smem, max_shared=max(smem, runtime.DEFAULT_SHARED_LIMIT))
        return dq, dk, dv
    ctype, D = _CTYPE[q.dtype], padded_head_dim(d)
    sc = _scale(scale, d, q.dtype)
    drow = _alloc(xp, "drow", (B, H, Tq), q.dtype)
    tail = (np.int32(H), np.int32(Tq), np.int32(Tk), np.int32(d), sc, np.int32(bool(is_causal)), has_mask)
    roles = kernels or BACKWARD_ROLES
    name, rows, nt = _kernel(roles["dq"], "dq", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tq // rows)), nt, (q, k, v, o, lse, do, key_mask, dq, drow) + tail)
    name, rows, nt = _kernel(roles["dkdv"], "dkdv", ctype, D)
    PROGRAM.launch(name, B * H * (-(-Tk // rows)), nt, (q, k, v, lse, drow, do, key_mask, dk, dv) + tail)
    return dq, dk, dv


def _v2_head_dim(d):
    return next(D for D in V2_HEAD_DIMS if d <= D)


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
# Version 2 (float16, bfloat16): inputs, error bounds, hooks.
#
# Error bounds. Inputs are exact X values (X = float16 or bfloat16, unit roundoff u = eps(X)/2), so
# the reference, in float64 on the same values, is exact to float64 rounding; the kernel's error
# comes from (first order, each bound elementwise and derived from the case's own data):
#   * mma sums of n exact products in float32: the PTX ISA promises at least single precision and
#     no order; GPU tensor cores align and truncate addends (Fasi et al., "Numerical behavior of
#     NVIDIA tensor cores", 2021), so gamma(n) = n 2^-23 per unit of sum |terms| (twice float32's
#     unit roundoff);
#   * the scores: |S^ - S| <= gamma(d) (|Q| |K|^T), which perturbs each exponential by that times the
#     scale, plus float32 roundings of the base-2 scaling, the running max and the rescalings (one
#     per key tile of 16 or more keys: (Tk/16 + 4) (2^-21 + 4 u32 |s|)) and exp2f's 2 ulp (2^-21);
#   * P and dS rounded to X for their mma, the outputs rounded to X: |round(x) - x| <= u |x| + eta,
#     eta half the smallest subnormal of X (2^-25 for float16: probabilities and their gradients
#     below 2^-14 are float16 subnormals; 2^-134 for bfloat16);
#   * float32 sums of Tk terms (the softmax denominator) and of d terms (Drow);
#   * subnormal float32 results flushed to zero on the GPU (CuPy compiles -ftz=true): n 2^-126.
# The rounding of P is the dominant term: |o^ - o| <= (u + small) (P |V|) + u |o|.
# validate compares max |out - ref| / max |ref| against max(bound) / max |ref| (per case and output);
# tests/test_kernels_half.py checks the bound element by element.

V2_DTYPES = (dtypes.FLOAT16, dtypes.BFLOAT16)
# One case per path: a single query row; Tq < Tk causal (bottom-right) with a key mask and head dim
# 40 (padded into D = 64); Tq > Tk; d = 128 over several key tiles; d = 36 (no 16-byte path).
V2_VALIDATE_CASES = (
    (1, 1, 1, 7, 64, False, False), (1, 2, 7, 65, 40, True, True), (1, 1, 65, 7, 128, False, True),
    (1, 1, 65, 200, 128, True, False), (2, 1, 7, 7, 36, True, True),
)
V2_BENCH_CASES = (
    (4, 16, 1024, 1024, 64, True, False), (4, 16, 1024, 1024, 128, True, False),
    (4, 16, 2048, 2048, 128, False, False), (4, 16, 2048, 2048, 128, True, False),
    (2, 16, 4096, 4096, 128, True, False),
)
_U32, _U23, _FTZ = 2.0 ** -24, 2.0 ** -23, 2.0 ** -126
_ETA = {"half": 2.0 ** -25, "bf16": 2.0 ** -134}   # half the smallest subnormal


def make_inputs_v2(xp, rng, case, dtype):
    """make_inputs in a half type: standard normal float32 values rounded to `dtype` (on xp; CuPy
    holds bfloat16 as uint16 bits)."""
    B, H, Tq, Tk, d, causal, masked = case
    out = {}
    for n, shape in (("q", (B, H, Tq, d)), ("k", (B, H, Tk, d)), ("v", (B, H, Tk, d)), ("do", (B, H, Tq, d))):
        a = dtypes.from_float(rng.standard_normal(shape, dtype=np.float32), dtype)
        out[n] = dtypes.to_device(xp, a) if isinstance(a, np.ndarray) else a
    key_mask = None
    if masked:
        key_mask = xp.asarray(rng.random((B, Tk)) > 0.3)
        key_mask[:, 0] = True
    out.update(key_mask=key_mask, is_causal=causal)
    return out


def backward_inputs_v2(xp, rng, case, dtype):
    """make_inputs_v2 plus the forward's o (the float64 reference rounded to dtype) and lse (float32)."""
    i = make_inputs_v2(xp, rng, case, dtype)
    o, lse = attention_forward_ref(*(dtypes.to_float64(i[n]) for n in ("q", "k", "v")), i["key_mask"],
                                   i["is_causal"])
    i.update(o=dtypes.from_float(o.astype(np.float32), i["q"].dtype), lse=lse.astype(np.float32))
    return i


def _unfused_v2(run):
    """The unfused composition as a half-precision engine would run it: float32 compute, outputs
    rounded back to the input's type (lse stays float32)."""
    def unfused(i):
        f32 = {k: (dtypes.to_float32(v) if dtypes.kind(v) in ("half", "bf16") else v) for k, v in i.items()}
        out = run(f32)
        return {k: (v if k == "lse" else dtypes.from_float(v, i["q"].dtype)) for k, v in out.items()}
    return unfused


def _gamma(n):
    return n * _U23 / (1 - n * _U23)


def _score_errors(i, p, scale):
    """Per element: eps_ij, the relative error of the kernel's exp(score) (see the comment above)."""
    q, k = np.abs(i["q"]), np.abs(i["k"])
    Tk, d = k.shape[2], k.shape[3]
    s = np.abs(i["q"] @ i["k"].swapaxes(-1, -2)) * scale
    m = np.where(p > 0, s, 0).max(axis=-1, keepdims=True)
    return scale * _gamma(d) * (q @ k.swapaxes(-1, -2)) + (Tk / 16 + 4) * (2.0 ** -21 + 4 * _U32 * (s + m))


def attention_v2_bounds(i, dtype, backward=False):
    """{output: elementwise bound on |kernel - reference|} for float64 inputs i (the validate inputs
    of version 2 widened to float64) computed in `dtype` (see the comment above)."""
    u, eta = dtypes.eps(dtype) / 2, _ETA[dtypes.kind(dtype)]
    q, k, v, km, causal = i["q"], i["k"], i["v"], i["key_mask"], i["is_causal"]
    Tq, Tk, d = q.shape[2], k.shape[2], q.shape[3]
    p, lse, scale = attention_probs(q, k, km, causal)
    eps = _score_errors(i, p, scale)
    if not backward:
        row_eps = np.where(p > 0, eps, 0).max(axis=-1)
        o = p @ v
        # the kernel rounds P before normalising (by l >= 1): eta per visible key
        b_o = (u + 2 * row_eps[..., None] + 2 * _gamma(Tk) + 2 * _U32) * (p @ np.abs(v)) + Tk * _FTZ
        b_o += eta * ((p > 0).astype(p.dtype) @ np.abs(v))
        b_o += u * (np.abs(o) + b_o) + eta
        b_lse = np.where(np.isfinite(lse), row_eps + _gamma(Tk) + 3 * _U32 * (np.abs(lse) + 1), 0)
        return {"o": b_o, "lse": b_lse}
    do, o = i["do"], i["o"]
    eps = eps + _U32 * np.abs(np.where(np.isfinite(lse), lse, 0))[..., None]  # lse handed in as float32
    drow = (do * o).sum(axis=-1, keepdims=True)
    dp = do @ v.swapaxes(-1, -2)
    ds = p * (dp - drow)
    b_ds = p * (eps * np.abs(dp - drow) + _gamma(d) * (np.abs(do) @ np.abs(v).swapaxes(-1, -2)
                                                      + np.abs(do * o).sum(axis=-1, keepdims=True)))
    b_ds += 2 * _U32 * np.abs(ds)
    b_dsx = b_ds + u * (np.abs(ds) + b_ds) + eta * (p > 0)   # dS rounded to X for its mma
    b_px = p * (eps + u) + eta * (p > 0)                       # P rounded to X for its mma
    ak, aq, ado = np.abs(k), np.abs(q), np.abs(do)
    b_dq = scale * (b_dsx @ ak + _gamma(Tk) * (np.abs(ds) @ ak)) + Tk * _FTZ
    b_dk = scale * (b_dsx.swapaxes(-1, -2) @ aq + _gamma(Tq) * (np.abs(ds).swapaxes(-1, -2) @ aq)) + Tq * _FTZ
    b_dv = b_px.swapaxes(-1, -2) @ ado + _gamma(Tq) * (p.swapaxes(-1, -2) @ ado) + Tq * _FTZ
    dq, dk, dv = ds @ k * scale, ds.swapaxes(-1, -2) @ q * scale, p.swapaxes(-1, -2) @ do
    out = {}
    for name, b, ref in (("dq", b_dq, dq), ("dk", b_dk, dk), ("dv", b_dv, dv)):
        b = b + 2 * _U32 * np.abs(ref)
        out[name] = b + u * (np.abs(ref) + b) + eta
    return out


def _v2_tolerance(dtype, backward):
    """validate's per-case tolerance: max(bound) / max|ref| for each output."""
    def tol(i, ref):
        bounds = attention_v2_bounds(i, dtype, backward)
        scale = {key: float(np.abs(np.where(np.isfinite(r), r, 0)).max()) for key, r in ref.items()}
        return {key: float(bounds[key].max() / scale[key]) if scale[key] > 0 else 0.0 for key in ref}
    return tol


def _fwd_bytes_v2(case, dtype):
    B, H, Tq, Tk, d, _, masked = case   # read q, k, v (and the mask); write o, lse (float32)
    return B * H * (2 * (2 * Tq * d + 2 * Tk * d) + 4 * Tq) + (B * Tk if masked else 0)


def _bwd_bytes_v2(case, dtype):
    B, H, Tq, Tk, d, _, masked = case   # read q, k, v, o, do; write dq, dk, dv; lse, Drow float32
    return B * H * (2 * (4 * Tq * d + 4 * Tk * d) + 4 * 3 * Tq) + (B * Tk if masked else 0)


_COMMON_V2 = {"cases": V2_VALIDATE_CASES, "bench_cases": V2_BENCH_CASES, "describe": describe, "dtypes": V2_DTYPES}
FORWARD_V2 = Operation(run=_fwd_run, reference=_fwd_ref, make_inputs=make_inputs_v2, bytes_moved=_fwd_bytes_v2,
                       unfused=_unfused_v2(_fwd_ref), tolerance={dt: _v2_tolerance(dt, False) for dt in V2_DTYPES},
                       **_COMMON_V2)
BACKWARD_V2 = Operation(run=_bwd_run, reference=_bwd_ref, make_inputs=backward_inputs_v2, bytes_moved=_bwd_bytes_v2,
                        unfused=_unfused_v2(_bwd_ref), tolerance={dt: _v2_tolerance(dt, True) for dt in V2_DTYPES},
                        **_COMMON_V2)

# ---------------------------------------------------------------------------------------------
# Kernel versions: one line per version (its roles, its tiles' template arguments); check,
# validate and bench run every line side by side. PROGRAM compiles every instantiation listed here.
KERNELS = (
    Kernel("attention_forward", CU, FORWARD_ROLES, FORWARD, templates(FORWARD_TILES), launch=launch_config),
    Kernel("attention_backward", CU, BACKWARD_ROLES, BACKWARD, templates(BACKWARD_TILES), launch=launch_config),
    Kernel("attention_forward_v2", CU_V2, V2_FORWARD_ROLES, FORWARD_V2, templates(V2_FORWARD_TILES), version=2,
           launch=launch_config),
    Kernel("attention_backward_v2", CU_V2, V2_BACKWARD_ROLES, BACKWARD_V2, templates(V2_BACKWARD_TILES), version=2,
           launch=launch_config),
)
PROGRAM = runtime.Program(CU, instantiations(KERNELS, CU))
PROGRAM_V2 = runtime.Program(CU_V2, instantiations(KERNELS, CU_V2))
