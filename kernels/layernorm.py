"""The layernorm family: kernels/layernorm.cu's NumPy reference, launchers, kernel versions,
validation cases and bench hooks.

    layernorm_forward(x, weight, bias, eps) -> (y, mean, rstd)
    layernorm_backward(dy, x, weight, mean, rstd, bias=True) -> (dx, dweight, dbias)
    layernorm_forward_ref, layernorm_backward_ref: the definitions the kernels are validated against

The launchers take numpy arrays (CPU emulator) or cupy arrays (GPU) and raise before any launch on
bad input. A kernel version is a Kernel line in KERNELS at the bottom (kernels/registry.py collects
it); `kernels=` runs a version's roles instead of the default ones.
"""

from __future__ import annotations

import numpy as np

from minigrad.kernels import runtime
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
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    return a


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


def layernorm_forward(x, weight, bias, eps, *, kernels=None):
    """LayerNorm over the last axis with the fused kernel.

    x (N, C) C-contiguous float32/float64; weight, bias (C,) of x's dtype, or None.
    Returns y (N, C), mean (N,), rstd (N,) in x's dtype (rstd = 1/sqrt(biased variance + eps)).
    numpy arrays run on the CPU emulator, cupy arrays on the GPU. `kernels` maps role -> kernel
    name to run another version (FORWARD_ROLES by default).
    """
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


def layernorm_backward(dy, x, weight, mean, rstd, *, bias=True, kernels=None):
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
    """
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

# ----------------------------------------------------------------------------- kernel versions
# One line per version; check, validate and bench run every line side by side. PROGRAM compiles
# every instantiation listed here (CuPy on a GPU, the emulator on the CPU).
KERNELS = (
    Kernel("layernorm_forward", CU, FORWARD_ROLES, FORWARD),
    Kernel("layernorm_backward", CU, BACKWARD_ROLES, BACKWARD),
    Kernel("layernorm_backward_twopass", CU, BACKWARD_TWOPASS_ROLES, BACKWARD),
)
PROGRAM = runtime.Program(CU, instantiations(KERNELS, CU))
