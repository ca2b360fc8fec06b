"""The layernorm family: NumPy reference, launchers, kernel versions, validation cases and bench
hooks of kernels/layernorm.cu (version 1) and kernels/layernorm_v2.cu (version 2).

    layernorm_forward(x, weight, bias, eps, version=None) -> (y, mean, rstd)
    layernorm_backward(dy, x, weight, mean, rstd, bias=True, version=None, param_dtype=None)
        -> (dx, dweight, dbias)
    layernorm_forward_ref, layernorm_backward_ref: the definitions the kernels are validated against

Versions (the dtype of x picks one; `version=` asks for one):
    1 (layernorm.cu)     float32, float64: everything in x's dtype
    2 (layernorm_v2.cu)  float16, bfloat16 (ml_dtypes.bfloat16 or its uint16 bits), and float32 on
                         request: y, dx in x's dtype; weight, bias, dweight, dbias in x's dtype or
                         float32; mean, rstd float32; float32 arithmetic; dweight/dbias finished in
                         the backward kernel. Rows up to 8192 elements.
The launchers take numpy arrays (CPU emulator) or cupy arrays (GPU) and raise before any launch on
bad input. A kernel version is a Kernel line in KERNELS at the bottom (kernels/registry.py collects
it); `kernels=` runs a version's roles instead of the default ones.
"""

from __future__ import annotations

import numpy as np

from minigrad.kernels import dtypes, runtime
from minigrad.kernels.family import Kernel, Operation, instantiations
from minigrad.kernels.runtime import array_module, check_array

CU = "layernorm.cu"

# ----------------------------------------------------------------------------- reference
# Works for numpy and cupy arrays alike (the array module is taken from the input).


def layernorm_forward_ref(x, weight, bias, eps):
    """x (N, C); weight/bias (C,) or None -> y (N, C), mean (N,), rstd (N,) = 1/sqrt(biased var + eps)."""
    xp = array_module(x)
    mean = x.mean(axis=1)
    xc = x - mean[:, None]
    var = (xc * xc).mean(axis=1)
    rstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))
    y = xc * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y, mean, rstd


def layernorm_backward_ref(dy, x, weight, mean, rstd, bias=True):
    """Gradients of layernorm_forward: dx (N, C); dweight (C,) or None if weight is None;
    dbias (C,) = dy summed over rows, or None if bias is False."""
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * weight if weight is not None else dy
    mg = g.mean(axis=1, keepdims=True)
    mgx = (g * xhat).mean(axis=1, keepdims=True)
    dx = rstd[:, None] * (g - mg - xhat * mgx)
    dweight = (dy * xhat).sum(axis=0) if weight is not None else None
    dbias = dy.sum(axis=0) if bias else None
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- launchers
# The __global__ functions each launcher role uses by default (kernels= selects another version).
FORWARD_ROLES = {"forward": "layernorm_forward"}
BACKWARD_TWOPASS_ROLES = {"dx": "layernorm_backward_dx", "partials": "layernorm_backward_partials",
                          "reduce": "layernorm_backward_reduce"}
BACKWARD_ROLES = {"fused": "layernorm_backward_fused", **BACKWARD_TWOPASS_ROLES}  # two-pass for wide rows

# Launch configuration (see kernels/layernorm.cu): rows up to 1024 wide get one warp per row and
# R rows per block; wider rows get a block of G threads (about 8 elements per thread). Rows are
# cached in dynamic shared memory when R * C * itemsize * buffers fits the budget below.
_SMEM_BUDGET = runtime.DEFAULT_SHARED_LIMIT - 2048  # leave room for the kernels' static shared memory
_MAX_PARTIALS = 512  # blocks of the fused backward = rows of dweight/dbias partials
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def _float_array(name, a, ndim):
    check_array(name, a, ndim=ndim)
    if a.dtype not in _CTYPE:
        raise TypeError(f"{name} must be float32 or float64 (version 1) or float16 or bfloat16 (version 2), "
                        f"got {a.dtype}")
    return a


def choose_version(x, version=None, kernels=None):
    """1 for float32/float64 x, 2 for float16/bfloat16; `version` (or the roles in `kernels`) may ask
    for 2 with float32 x. Raises TypeError for a dtype the version cannot take."""
    if kernels is not None:
        version = 2 if set(kernels.values()) & set(V2_ROLES.values()) else 1
    if not (isinstance(x, np.ndarray) or runtime.is_cupy_array(x)):
        raise TypeError(f"x must be a numpy or cupy array, got {type(x).__name__}")
    kind = dtypes.kind(x)
    if version is None:
        version = 2 if kind in ("half", "bf16") else 1
    if version not in (1, 2):
        raise ValueError(f"layernorm: version must be 1 or 2, got {version!r}")
    if version == 2 and kind not in ("half", "bf16", "float"):
        raise TypeError(f"layernorm version 2 takes float16, bfloat16 or float32 x, got {x.dtype}")
    return version


def _rows_config(N, C, itemsize, buffers):
    """(grid, block, shared_mem, cache) for a row-group kernel over an (N, C) array."""
    if C <= 1024:
        G, R = 32, 4
        while R > 1 and R * C * itemsize * buffers > _SMEM_BUDGET:
            R //= 2
    else:
        G, R = min(1024, max(64, 32 * -(-C // 256))), 1  # ceil(C/8) rounded up to a warp
    smem = R * C * itemsize * buffers
    cache = smem <= _SMEM_BUDGET
    if not cache:
        smem, R = 0, (4 if G == 32 else 1)
    return (-(-N // R),), (G, R), smem, cache


def layernorm_forward(x, weight, bias, eps, *, kernels=None, version=None):
    """LayerNorm over the last axis with the fused kernel.

    x (N, C) C-contiguous float32/float64 (version 1) or float16/bfloat16 (version 2, see the
    module docstring); weight, bias (C,) of x's dtype (version 2: or float32), or None.
    Returns y (N, C) in x's dtype, mean (N,), rstd (N,) (x's dtype in version 1, float32 in
    version 2; rstd = 1/sqrt(biased variance + eps)). numpy arrays run on the CPU emulator, cupy
    arrays on the GPU. `kernels` maps role -> kernel name to run another version (FORWARD_ROLES by
    default).
    """
    if choose_version(x, version, kernels) == 2:
        return _forward_v2(x, weight, bias, eps)
    _float_array("x", x, 2)
    N, C = x.shape
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            check_array(name, a, ndim=1, dtype=x.dtype)
            if a.shape[0] != C:
                raise ValueError(f"{name} has {a.shape[0]} elements but x rows have width {C}")
            if array_module(a) is not array_module(x):
                raise TypeError(f"{name} and x must both be numpy or both be cupy arrays")
    if C == 0:
        raise ValueError("x has rows of width 0; layernorm needs at least one column")
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps must be a non-negative number, got {eps}")
    xp = array_module(x)
    y = xp.empty_like(x)
    mean = xp.empty((N,), dtype=x.dtype)
    rstd = xp.empty((N,), dtype=x.dtype)
    if N == 0:
        return y, mean, rstd
    names = {**FORWARD_ROLES, **(kernels or {})}
    grid, block, smem, cache = _rows_config(N, C, x.itemsize, 1)
    t = x.dtype.type
    PROGRAM.launch(f"{names['forward']}<{_CTYPE[x.dtype]}>", grid, block,
                   (x, weight, bias, y, mean, rstd, np.int32(N), np.int32(C), t(eps), np.int32(cache)),
                   shared_mem=smem)
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd, *, bias=True, kernels=None, version=None, param_dtype=None):
    """Gradients of layernorm_forward from its saved mean and rstd.

    dy, x (N, C); weight (C,) or None; mean, rstd (N,); all one float dtype, C-contiguous.
    Returns (dx, dweight, dbias): dweight is None when weight is None; dbias (the sum of dy over
    rows) is computed when bias=True (the default, whether or not the forward had a bias) and is
    None when bias=False. dweight/dbias come from a fixed-order two-stage reduction: repeated
    calls give bit-identical results.

    Kernels: layernorm_backward_fused (dx + per-block column partials) then
    layernorm_backward_reduce; when the fused kernel's accumulators do not fit in shared memory
    (or a version without a "fused" role is requested through `kernels`), layernorm_backward_dx
    then layernorm_backward_partials and layernorm_backward_reduce.

    Version 2 (float16/bfloat16 x, or version=2): mean, rstd float32; dx in x's dtype, dweight in
    weight's dtype, dbias in weight's dtype, or param_dtype (default x's dtype) without a weight;
    one kernel (layernorm_v2_backward) computes all three.
    """
    if choose_version(x, version, kernels) == 2:
        return _backward_v2(dy, x, weight, mean, rstd, bias, param_dtype)
    _float_array("x", x, 2)
    N, C = x.shape
    check_array("dy", dy, dtype=x.dtype, shape=(N, C))
    check_array("mean", mean, dtype=x.dtype, shape=(N,))
    check_array("rstd", rstd, dtype=x.dtype, shape=(N,))
    if weight is not None:
        check_array("weight", weight, ndim=1, dtype=x.dtype)
        if weight.shape[0] != C:
            raise ValueError(f"weight has {weight.shape[0]} elements but x rows have width {C}")
    arrays = [a for a in (dy, x, weight, mean, rstd) if a is not None]
    if len({array_module(a) for a in arrays}) != 1:
        raise TypeError("dy, x, weight, mean and rstd must all be numpy or all be cupy arrays")
    xp = array_module(x)
    names = dict(BACKWARD_ROLES if kernels is None else kernels)  # a version: exactly the roles it lists
    ct = _CTYPE[x.dtype]
    dx = xp.empty_like(x)
    dweight = xp.zeros((C,), dtype=x.dtype) if weight is not None else None
    dbias = xp.zeros((C,), dtype=x.dtype) if bias else None
    if N == 0 or C == 0:
        return dx, dweight, dbias
    grid, block, smem, cache = _rows_config(N, C, x.itemsize, 2)
    need_params = dweight is not None or dbias is not None
    if need_params and "fused" in names and block[1] * C * x.itemsize * 2 <= _SMEM_BUDGET:
        # dx and per-block column partials in one kernel, then the fixed-order reduction
        G, R = block
        P = min(-(-N // R), _MAX_PARTIALS)
        pw = xp.empty((P, C), dtype=x.dtype) if dweight is not None else None
        pb = xp.empty((P, C), dtype=x.dtype) if dbias is not None else None
        PROGRAM.launch(f"{names['fused']}<{ct}>", (P,), (G, R),
                       (dy, x, weight, mean, rstd, dx, pw, pb, np.int32(N), np.int32(C)),
                       shared_mem=2 * R * C * x.itemsize)
    else:
        PROGRAM.launch(f"{names['dx']}<{ct}>", grid, block,
                       (dy, x, weight, mean, rstd, dx, np.int32(N), np.int32(C), np.int32(cache)),
                       shared_mem=smem)
        if not need_params:
            return dx, None, None
        rows_per_chunk = max(32, -(-N // 256))
        P = -(-N // rows_per_chunk)
        pw = xp.empty((P, C), dtype=x.dtype) if dweight is not None else None
        pb = xp.empty((P, C), dtype=x.dtype) if dbias is not None else None
        PROGRAM.launch(f"{names['partials']}<{ct}>", (-(-C // 32), P), (32, 8),
                       (dy, x, mean, rstd, pw, pb, np.int32(N), np.int32(C), np.int32(rows_per_chunk)))
    PROGRAM.launch(f"{names['reduce']}<{ct}>", (-(-C // 256),), (256,),
                   (pw, pb, dweight, dbias, np.int32(P), np.int32(C)))
    return dx, dweight, dbias


# ----------------------------------------------------------------------------- version 2
# layernorm_v2.cu: <X, W, MAXV>, X the activations' type, W the parameters'. A row group of G threads
# holds a row in registers, MAXV 16-byte chunks per thread at most: G = 32 (R = 4 rows per block)
# while C <= 32 * VEC * MAXV (VEC = 16 / itemsize), else one block of the smallest G that fits.
V2_MAXV = {2: 4, 4: 8}   # chunks per thread by itemsize: rows up to 256 * 32 = 8192 elements either way
V2_MAX_THREADS = 256   # the kernels' __launch_bounds__
V2_TYPES = (("mg_half", "mg_half"), ("mg_half", "float"), ("mg_bf16", "mg_bf16"), ("mg_bf16", "float"),
            ("float", "float"))
V2_ROLES = {"forward": "layernorm_v2_forward", "backward": "layernorm_v2_backward"}
V2_FORWARD_ROLES = {"forward": V2_ROLES["forward"]}
V2_BACKWARD_ROLES = {"backward": V2_ROLES["backward"]}
CU_V2 = "layernorm_v2.cu"
_V2_CTYPE = {"half": "mg_half", "bf16": "mg_bf16", "float": "float"}
# The emulator runs at most this many blocks, so that blocks take several rows each and the
# backward's last block adds several rows of partials; on a GPU the grid is sized to the SMs.
EMULATED_BLOCKS = 3


def _v2_config(xp, N, C, itemsize):
    """(grid, block, rows per block) of a version-2 launch over an (N, C) array."""
    vec, maxv = 16 // itemsize, V2_MAXV[itemsize]
    chunks = -(-C // vec)
    if chunks <= 32 * maxv:
        G, R = 32, 4
    else:
        G, R = 32 * -(-chunks // (32 * maxv)), 1
        if G > V2_MAX_THREADS:
            raise ValueError(f"layernorm version 2 takes rows of at most {V2_MAX_THREADS * vec * maxv} elements, "
                             f"got C={C} (version 1 takes wider float32 rows)")
    groups = -(-N // R)
    if xp is np:
        blocks = min(groups, EMULATED_BLOCKS)
    else:   # a few resident blocks per SM, the rows shared out among them
        blocks = min(groups, _sm_count() * max(1, 1024 // (G * R)))
    return (max(1, blocks),), (G, R), R


def _sm_count():
    import cupy

    return int(cupy.cuda.runtime.deviceGetAttribute(16, cupy.cuda.Device().id))  # cudaDevAttrMultiProcessorCount


def _v2_params(x, weight, bias):
    """The W type of the parameters (x's dtype or float32; weight and bias agree)."""
    pdt = None
    for name, a in (("weight", weight), ("bias", bias)):
        if a is None:
            continue
        check_array(name, a, ndim=1)
        if a.shape[0] != x.shape[1]:
            raise ValueError(f"{name} has {a.shape[0]} elements but x rows have width {x.shape[1]}")
        if a.dtype != x.dtype and a.dtype != np.float32:
            raise TypeError(f"{name} must have x's dtype ({dtypes.name(x.dtype)}) or float32, got {a.dtype}")
        if array_module(a) is not array_module(x):
            raise TypeError(f"{name} and x must both be numpy or both be cupy arrays")
        if pdt is not None and a.dtype != pdt:
            raise TypeError(f"weight and bias must have one dtype, got {pdt} and {a.dtype}")
        pdt = a.dtype
    return pdt if pdt is not None else x.dtype


def _v2_name(role, x, pdt):
    kx = _V2_CTYPE[dtypes.kind(x)]
    kw = "float" if np.dtype(pdt) == np.float32 else kx
    return f"{V2_ROLES[role]}<{kx}, {kw}, {V2_MAXV[x.itemsize]}>"


def _forward_v2(x, weight, bias, eps):
    check_array("x", x, ndim=2)
    N, C = x.shape
    if C == 0:
        raise ValueError("x has rows of width 0; layernorm needs at least one column")
    pdt = _v2_params(x, weight, bias)
    eps = float(eps)
    if not eps >= 0.0:
        raise ValueError(f"eps must be a non-negative number, got {eps}")
    xp = array_module(x)
    _check_device(x)
    y = xp.empty_like(x)
    mean = xp.empty((N,), dtype=np.float32)
    rstd = xp.empty((N,), dtype=np.float32)
    if N == 0:
        return y, mean, rstd
    grid, block, _ = _v2_config(xp, N, C, x.itemsize)
    PROGRAM_V2.launch(_v2_name("forward", x, pdt), grid, block,
                      (x, weight, bias, y, mean, rstd, np.int32(N), np.int32(C), np.float32(eps)))
    return y, mean, rstd


def _backward_v2(dy, x, weight, mean, rstd, bias, param_dtype):
    check_array("x", x, ndim=2)
    N, C = x.shape
    check_array("dy", dy, dtype=x.dtype, shape=(N, C))
    check_array("mean", mean, dtype=np.float32, shape=(N,))
    check_array("rstd", rstd, dtype=np.float32, shape=(N,))
    pdt = _v2_params(x, weight, None)
    if weight is None and param_dtype is not None:
        pdt = np.dtype(param_dtype)
        if pdt != x.dtype and pdt != np.float32:
            raise TypeError(f"param_dtype must be x's dtype or float32, got {pdt}")
    arrays = [a for a in (dy, x, weight, mean, rstd) if a is not None]
    if len({array_module(a) for a in arrays}) != 1:
        raise TypeError("dy, x, weight, mean and rstd must all be numpy or all be cupy arrays")
    xp = array_module(x)
    _check_device(x)
    dx = xp.empty_like(x)
    dweight = xp.zeros((C,), dtype=pdt) if weight is not None else None
    dbias = xp.zeros((C,), dtype=pdt) if bias else None
    if N == 0 or C == 0:
        return dx, dweight, dbias
    grid, block, R = _v2_config(xp, N, C, x.itemsize)
    need = dweight is not None or dbias is not None
    partials = xp.empty((grid[0], 2, C), dtype=np.float32) if need else None
    counter = xp.zeros((1,), dtype=np.uint32) if need else None
    smem = R * 2 * C * 4 if need else 0   # the row groups' column sums (up to 64 KiB: opt-in)
    PROGRAM_V2.launch(_v2_name("backward", x, pdt), grid, block,
                      (dy, x, weight, mean, rstd, dx, partials, counter, dweight, dbias, np.int32(N), np.int32(C)),
                      shared_mem=smem, max_shared=max(smem + 1024, runtime.DEFAULT_SHARED_LIMIT))   # + its static red[], last
    return dx, dweight, dbias


def _check_device(x):
    if runtime.is_cupy_array(x):
        import cupy

        if int(cupy.cuda.Device().compute_capability) < 80:
            raise RuntimeError("layernorm version 2 needs compute capability 8.0 or later (its file converts "
                               "with cvt.rn.bf16)")


# ----------------------------------------------------------------------------- workbench hooks
# `minigrad kernels validate | bench`: a case is (N, C, affine).

def _inputs(xp, rng, case, dtype):
    N, C, affine = case
    x = rng.standard_normal((N, C)) * 2.0 + 0.5
    inputs = {"x": x, "dy": rng.standard_normal((N, C)),
              "weight": 1.0 + 0.5 * rng.standard_normal(C) if affine else None,
              "bias": rng.standard_normal(C) if affine else None, "eps": 1e-5}
    return {k: (xp.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def _fwd_run(kernel, i):
    y, mean, rstd = layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"], kernels=kernel.roles)
    return {"y": y, "mean": mean, "rstd": rstd}


def _fwd_ref(i):
    y, mean, rstd = layernorm_forward_ref(i["x"], i["weight"], i["bias"], i["eps"])
    return {"y": y, "mean": mean, "rstd": rstd}


def _bwd_inputs(xp, rng, case, dtype):
    """Forward inputs plus dy and the forward's saved mean/rstd (so runs time the backward only)."""
    i = _inputs(xp, rng, case, dtype)
    _, i["mean"], i["rstd"] = layernorm_forward_ref(i["x"], i["weight"], i["bias"], i["eps"])
    return i


def _bwd_run(kernel, i):
    dx, dw, db = layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"], kernels=kernel.roles)
    return {"dx": dx, "dweight": dw, "dbias": db}


def _bwd_ref(i):
    dx, dw, db = layernorm_backward_ref(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"])
    return {"dx": dx, "dweight": dw, "dbias": db}


def _fwd_bytes(case, dtype):
    N, C, affine = case
    return np.dtype(dtype).itemsize * (2 * N * C + 2 * N + (2 * C if affine else 0))


def _bwd_bytes(case, dtype):
    N, C, affine = case  # read dy, x, mean, rstd, weight; write dx, dweight, dbias
    return np.dtype(dtype).itemsize * (3 * N * C + 2 * N + (3 * C if affine else C))


def _describe(case):
    N, C, affine = case
    return f"{N}x{C}" + ("" if affine else " no-affine")


VALIDATE_CASES = ((1, 1, True), (7, 5, False), (5, 31, True), (4, 64, True), (3, 100, False), (16, 768, True),
                  (2, 1025, True), (2, 4097, True), (600, 40, True), (3, 6000, True))
BENCH_CASES = tuple((8192, C, True) for C in (768, 1024, 2048, 4096))

FORWARD = Operation(run=_fwd_run, reference=_fwd_ref, make_inputs=_inputs, cases=VALIDATE_CASES,
                    bench_cases=BENCH_CASES, bytes_moved=_fwd_bytes, unfused=_fwd_ref, describe=_describe)
BACKWARD = Operation(run=_bwd_run, reference=_bwd_ref, make_inputs=_bwd_inputs, cases=VALIDATE_CASES,
                     bench_cases=BENCH_CASES, bytes_moved=_bwd_bytes, unfused=_bwd_ref, describe=_describe)

# ----------------------------------------------------------------------------- version-2 hooks
# A case is (N, C, affine, params): params "x" (weight, bias in x's dtype) or "float32".
#
# Error bounds (elementwise, first order, from each case's own data; X's unit roundoff u, eta half
# its smallest subnormal; float32 arithmetic, unit u32 = 2^-24, sums of n terms gamma(n) = n u32 in
# any order; subnormal float32 results may be flushed on the GPU, 2^-126 each):
#   mean   |dmu| <= gamma(C+1) mean|x|;  rstd relative: gamma(C+3)/2 + 2 u32 + dmu^2 / (2 (var + eps))
#   y      |w| rstd (dmu + |x - mu| (rel_rstd + 3 u32)) + u32 (|y| + |b|), then rounded to X
#   dx     rstd (u32 |g| + dmg + |xhat| dmgx + |mgx| dxhat + 3 u32 (|g| + |mg| + |xhat mgx|)), g = dy w,
#          with dxhat = 2 u32 |xhat|, dmg = gamma(C+1) mean|g|, dmgx = gamma(C+2) mean|g xhat| + mean|g| dxhat
#   dweight gamma(N+3) sum|dy xhat| + sum |dy| dxhat;  dbias gamma(N+2) sum|dy|; rounded to W
# Inputs are exact values of their types (mean and rstd as float32), so the float64 reference on
# the same values is exact to float64 rounding.
V2_DTYPES = (np.dtype(np.float32), dtypes.FLOAT16, dtypes.BFLOAT16)
V2_VALIDATE_CASES = ((1, 1, True, "x"), (7, 5, False, "x"), (5, 40, True, "float32"), (37, 768, True, "x"),
                     (3, 2051, True, "x"), (4, 4096, True, "float32"))
V2_BENCH_CASES = tuple((8192, C, True, "x") for C in (768, 1024, 2048, 4096, 8192))
_U32, _FTZ = 2.0 ** -24, 2.0 ** -126
_ETA = {"half": 2.0 ** -25, "bf16": 2.0 ** -134, "float": 2.0 ** -126}


def _gamma(n):
    return n * _U32 / (1 - n * _U32)


def _v2_case(case):
    """(N, C, affine, params); a version-1 case (N, C, affine) takes parameters in x's dtype."""
    return tuple(case) if len(case) == 4 else (*case, "x")


def _v2_inputs(xp, rng, case, dtype):
    N, C, affine, params = _v2_case(case)
    pdt = np.dtype(np.float32) if params == "float32" else dtype

    def make(shape, dt, scale=1.0, shift=0.0):   # float32 normals rounded to dt, on xp
        a = dtypes.from_float(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale) + np.float32(shift), dt)
        return dtypes.to_device(xp, a) if isinstance(a, np.ndarray) else a
    return {"x": make((N, C), dtype, 2.0, 0.5), "dy": make((N, C), dtype),
            "weight": make((C,), pdt, 0.5, 1.0) if affine else None, "bias": make((C,), pdt) if affine else None,
            "eps": 1e-5, "params": params}


def _v2_bwd_inputs(xp, rng, case, dtype):
    """Forward inputs plus the float64 reference's mean and rstd rounded to float32 (as version 2 saves them)."""
    i = _v2_inputs(xp, rng, case, dtype)
    _, mean, rstd = layernorm_forward_ref(dtypes.to_float64(i["x"]), None, None, i["eps"])
    i["mean"], i["rstd"] = mean.astype(np.float32), rstd.astype(np.float32)
    return i


def _v2_fwd_run(kernel, i):
    y, mean, rstd = layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"], kernels=kernel.roles)
    return {"y": y, "mean": mean, "rstd": rstd}


def _v2_bwd_run(kernel, i):
    dx, dw, db = layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"], kernels=kernel.roles)
    return {"dx": dx, "dweight": dw, "dbias": db}


def layernorm_v2_bounds(i, dtype, backward=False):
    """{output: elementwise bound on |kernel - reference|} for float64 inputs i of a version-2 case
    run in `dtype` (i["params"] == "float32": weight, bias and their gradients in float32)."""
    kx = dtypes.kind(dtype)
    u, eta = dtypes.eps(dtype) / 2, _ETA[kx]
    kw = "float" if i.get("params") == "float32" else kx
    uw, etaw = dtypes.EPS[kw] / 2, _ETA[kw]
    x, w = i["x"], i["weight"]
    N, C = x.shape
    aw = np.abs(w) if w is not None else 1.0
    if not backward:
        y, mu, r = layernorm_forward_ref(x, w, i["bias"], i["eps"])
        var = 1.0 / r ** 2 - i["eps"]
        dmu = _gamma(C + 1) * np.abs(x).mean(axis=1)
        rel_r = _gamma(C + 3) / 2 + 2 * _U32 + dmu ** 2 / (2 * (var + i["eps"]))
        ab = np.abs(i["bias"]) if i["bias"] is not None else 0.0
        b_y = aw * r[:, None] * (dmu[:, None] + np.abs(x - mu[:, None]) * (rel_r[:, None] + 3 * _U32))
        b_y += _U32 * (np.abs(y) + ab) + C * _FTZ
        b_y += u * (np.abs(y) + b_y) + eta
        return {"y": b_y, "mean": dmu + _U32 * np.abs(mu) + C * _FTZ, "rstd": r * (rel_r + _U32)}
    dy, mu, r = i["dy"], i["mean"], i["rstd"]
    dx, dw, db = layernorm_backward_ref(dy, x, w, mu, r)
    xh = (x - mu[:, None]) * r[:, None]
    g = dy * w if w is not None else dy
    mg = g.mean(axis=1, keepdims=True)
    mgx = (g * xh).mean(axis=1, keepdims=True)
    dxh = 2 * _U32 * np.abs(xh)
    dmg = _gamma(C + 1) * np.abs(g).mean(axis=1, keepdims=True)
    dmgx = _gamma(C + 2) * np.abs(g * xh).mean(axis=1, keepdims=True) + (np.abs(g) * dxh).mean(axis=1, keepdims=True)
    b_dx = r[:, None] * (_U32 * np.abs(g) + dmg + np.abs(xh) * dmgx + np.abs(mgx) * dxh
                         + 3 * _U32 * (np.abs(g) + np.abs(mg) + np.abs(xh * mgx))) + C * _FTZ
    b_dx += u * (np.abs(dx) + b_dx) + eta
    out = {"dx": b_dx}
    b_db = _gamma(N + 2) * np.abs(dy).sum(axis=0) + N * _FTZ
    out["dbias"] = b_db + uw * (np.abs(db) + b_db) + etaw
    if w is not None:
        b_dw = _gamma(N + 3) * np.abs(dy * xh).sum(axis=0) + (np.abs(dy) * dxh).sum(axis=0) + N * _FTZ
        out["dweight"] = b_dw + uw * (np.abs(dw) + b_dw) + etaw
    return out


def _v2_tolerance(dtype, backward):
    def tol(i, ref):
        bounds = layernorm_v2_bounds(i, dtype, backward)
        scale = {key: float(np.abs(r).max()) for key, r in ref.items()}   # 0: the output must be exact
        return {key: float(bounds[key].max() / scale[key]) if scale[key] > 0 else 0.0 for key in ref}
    return tol


def _v2_describe(case):
    N, C, affine, params = _v2_case(case)
    return f"{N}x{C}" + ("" if affine else " no-affine") + (" float32 params" if params == "float32" else "")


def _v2_fwd_bytes(case, dtype):
    N, C, affine, params = _v2_case(case)   # read x, w, b; write y, mean, rstd (float32)
    pw = 4 if params == "float32" else np.dtype(dtype).itemsize
    return np.dtype(dtype).itemsize * 2 * N * C + 8 * N + (2 * C * pw if affine else 0)


def _v2_bwd_bytes(case, dtype):
    N, C, affine, params = _v2_case(case)   # read dy, x, mean, rstd, weight; write dx, dweight, dbias
    pw = 4 if params == "float32" else np.dtype(dtype).itemsize
    return np.dtype(dtype).itemsize * 3 * N * C + 8 * N + (3 * C if affine else C) * pw


def _v2_unfused(ref, backward):
    """The unfused composition as a half-precision engine runs it: float32 compute, rounded back."""
    def run(i):
        f32 = {k: (dtypes.to_float32(v) if dtypes.kind(v) in ("half", "bf16") else v) for k, v in i.items()}
        out = ref(f32)
        kinds = {"y": i["x"], "dx": i["x"], "dweight": i["weight"], "dbias": i["weight"] if i["weight"] is not None
                 else i["x"]}
        return {k: (dtypes.from_float(v, kinds[k].dtype) if k in kinds and v is not None else v) for k, v in out.items()}
    return run


FORWARD_V2 = Operation(run=_v2_fwd_run, reference=_fwd_ref, make_inputs=_v2_inputs, cases=V2_VALIDATE_CASES,
                       bench_cases=V2_BENCH_CASES, bytes_moved=_v2_fwd_bytes, unfused=_v2_unfused(_fwd_ref, False),
                       describe=_v2_describe, dtypes=V2_DTYPES,
                       tolerance={dt: _v2_tolerance(dt, False) for dt in V2_DTYPES})
BACKWARD_V2 = Operation(run=_v2_bwd_run, reference=_bwd_ref, make_inputs=_v2_bwd_inputs, cases=V2_VALIDATE_CASES,
                        bench_cases=V2_BENCH_CASES, bytes_moved=_v2_bwd_bytes, unfused=_v2_unfused(_bwd_ref, True),
                        describe=_v2_describe, dtypes=V2_DTYPES,
                        tolerance={dt: _v2_tolerance(dt, True) for dt in V2_DTYPES})


def _v2_launch(name):
    """(threads, dynamic shared bytes) of a typical version-2 launch (8192 x 768 rows, for `check`)."""
    fn, _, args = name.partition("<")
    kx = args.split(",")[0].strip()
    itemsize = 4 if kx == "float" else 2
    _, (G, R), _ = _v2_config(np, 8192, 768, itemsize)
    return G * R, (R * 2 * 768 * 4 if fn == V2_ROLES["backward"] else 0)


def _v1_launch(name):
    """(threads, dynamic shared bytes) of a typical version-1 launch (8192 x 768 rows, for `check`)."""
    fn, _, args = name.partition("<")
    itemsize = 8 if args.startswith("double") else 4
    if fn == "layernorm_backward_partials":
        return 256, 0
    if fn == "layernorm_backward_reduce":
        return 256, 0
    buffers = 2 if "backward" in fn else 1
    _, (G, R), smem, _ = _rows_config(8192, 768, itemsize, buffers)
    return G * R, smem


# ----------------------------------------------------------------------------- kernel versions
# One line per version; check, validate and bench run every line side by side. PROGRAM compiles
# every instantiation listed here (CuPy on a GPU, the emulator on the CPU).
_V2_TEMPLATES = tuple(f"{kx}, {kw}, {V2_MAXV[4 if kx == 'float' else 2]}" for kx, kw in V2_TYPES)
KERNELS = (
    Kernel("layernorm_forward", CU, FORWARD_ROLES, FORWARD, launch=_v1_launch),
    Kernel("layernorm_backward", CU, BACKWARD_ROLES, BACKWARD, launch=_v1_launch),
    Kernel("layernorm_backward_twopass", CU, BACKWARD_TWOPASS_ROLES, BACKWARD, launch=_v1_launch),
    Kernel("layernorm_forward_v2", CU_V2, V2_FORWARD_ROLES, FORWARD_V2, _V2_TEMPLATES, version=2, launch=_v2_launch),
    Kernel("layernorm_backward_v2", CU_V2, V2_BACKWARD_ROLES, BACKWARD_V2, _V2_TEMPLATES, version=2,
           launch=_v2_launch),
)
PROGRAM = runtime.Program(CU, instantiations(KERNELS, CU))
PROGRAM_V2 = runtime.Program(CU_V2, instantiations(KERNELS, CU_V2))
