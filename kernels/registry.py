"""The table of kernels: what `minigrad kernels check | validate | bench` iterate over, and the list
of template instantiations every .cu file is compiled with (NVRTC check, CuPy RawModule
name_expressions, CPU emulator build).

One registration line per kernel version (see KERNELS at the bottom):

    Kernel(name, cu, roles, family, templates=FLOATS)

    name       unique label printed by check/validate/bench, e.g. "layernorm_forward"
    cu         the .cu file in kernels/
    roles      {role: __global__ function name}: the kernels one call of this version launches;
               the family's `run` passes the dict to the public launcher (kernels= argument)
    family     a Family (below): inputs, reference, launcher, validate and bench configuration,
               shared by all versions of one operation
    templates  template argument lists; each role is instantiated as f"{fn}<{t}>" for every t
               (for tile-templated kernels e.g. ("float, 64", "double, 64"))

Adding a kernel version: write the new __global__ function in the .cu file, then add one line,
e.g. Kernel("layernorm_forward_v2", "layernorm.cu", {"forward": "layernorm_forward_v2"}, LAYERNORM_FORWARD).

Adding a kernel family: write kernels/<family>.cu and its public launcher (see kernels/launch.py),
define one Family(...) describing it (it may live in the family's own module and be imported
here), then add its Kernel(...) lines to KERNELS.

Family fields:
    run(kernel, inputs) -> dict of outputs    launches the version (numpy inputs: emulator; cupy: GPU)
    reference(inputs) -> dict of outputs      NumPy/CuPy reference with the same keys
    make_inputs(xp, rng, case, dtype) -> dict inputs for one case (xp is numpy or cupy)
    cases                                     validate cases (small: they run on the emulator)
    dtypes                                    dtypes validated (default float32, float64)
    tolerance {dtype: rel}                    max |out - ref| / max |ref| allowed per output
    bench_cases                               GPU benchmark cases
    bytes_moved(case, dtype) -> int           minimum global-memory traffic of one call
    unfused(inputs) -> dict                   the unfused array-library composition (bench)
    describe(case) -> str                     how a case is printed
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

FLOATS = ("float", "double")
DEFAULT_TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


@dataclasses.dataclass(frozen=True)
class Family:
    run: Callable
    reference: Callable
    make_inputs: Callable
    cases: tuple
    bench_cases: tuple = ()
    bytes_moved: Callable | None = None
    unfused: Callable | None = None
    dtypes: tuple = (np.float32, np.float64)
    tolerance: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_TOLERANCE))
    describe: Callable = str


@dataclasses.dataclass(frozen=True)
class Kernel:
    name: str
    cu: str
    roles: dict
    family: Family
    templates: tuple = FLOATS

    @property
    def instantiations(self) -> tuple:
        return tuple(f"{fn}<{t}>" for fn in self.roles.values() for t in self.templates)


# ----------------------------------------------------------------------------- layernorm family


def _ln_inputs(xp, rng, case, dtype):
    N, C, affine = case
    x = rng.standard_normal((N, C)) * 2.0 + 0.5
    inputs = {"x": x, "dy": rng.standard_normal((N, C)),
              "weight": 1.0 + 0.5 * rng.standard_normal(C) if affine else None,
              "bias": rng.standard_normal(C) if affine else None, "eps": 1e-5}
    return {k: (xp.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v) for k, v in inputs.items()}


def _ln_fwd_run(kernel, i):
    from minigrad.kernels import launch

    y, mean, rstd = launch.layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"], kernels=kernel.roles)
    return {"y": y, "mean": mean, "rstd": rstd}


def _ln_fwd_ref(i):
    from minigrad.kernels import reference

    y, mean, rstd = reference.layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"])
    return {"y": y, "mean": mean, "rstd": rstd}


def _ln_bwd_inputs(xp, rng, case, dtype):
    """Forward inputs plus dy and the forward's saved mean/rstd (so runs time the backward only)."""
    from minigrad.kernels import reference

    i = _ln_inputs(xp, rng, case, dtype)
    _, i["mean"], i["rstd"] = reference.layernorm_forward(i["x"], i["weight"], i["bias"], i["eps"])
    return i


def _ln_bwd_run(kernel, i):
    from minigrad.kernels import launch

    dx, dw, db = launch.layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"], kernels=kernel.roles)
    return {"dx": dx, "dweight": dw, "dbias": db}


def _ln_bwd_ref(i):
    from minigrad.kernels import reference

    dx, dw, db = reference.layernorm_backward(i["dy"], i["x"], i["weight"], i["mean"], i["rstd"])
    return {"dx": dx, "dweight": dw, "dbias": db}


def _ln_fwd_bytes(case, dtype):
    N, C, affine = case
    return np.dtype(dtype).itemsize * (2 * N * C + 2 * N + (2 * C if affine else 0))


def _ln_bwd_bytes(case, dtype):
    N, C, affine = case  # read dy, x, mean, rstd, weight; write dx, dweight, dbias
    return np.dtype(dtype).itemsize * (3 * N * C + 2 * N + (3 * C if affine else C))


_LN_CASES = ((1, 1, True), (7, 5, False), (5, 31, True), (4, 64, True), (3, 100, False), (16, 768, True),
             (2, 1025, True), (2, 4097, True), (600, 40, True), (3, 6000, True))
_LN_BENCH = tuple((8192, C, True) for C in (768, 1024, 2048, 4096))


def _ln_describe(case):
    N, C, affine = case
    return f"{N}x{C}" + ("" if affine else " no-affine")


LAYERNORM_FORWARD = Family(run=_ln_fwd_run, reference=_ln_fwd_ref, make_inputs=_ln_inputs, cases=_LN_CASES,
                           bench_cases=_LN_BENCH, bytes_moved=_ln_fwd_bytes, unfused=_ln_fwd_ref,
                           describe=_ln_describe)
LAYERNORM_BACKWARD = Family(run=_ln_bwd_run, reference=_ln_bwd_ref, make_inputs=_ln_bwd_inputs, cases=_LN_CASES,
                            bench_cases=_LN_BENCH, bytes_moved=_ln_bwd_bytes, unfused=_ln_bwd_ref,
                            describe=_ln_describe)
_LN_BWD_TWOPASS = {"dx": "layernorm_backward_dx", "partials": "layernorm_backward_partials",
                   "reduce": "layernorm_backward_reduce"}
_LN_BWD = {"fused": "layernorm_backward_fused", **_LN_BWD_TWOPASS}  # fused, two-pass for wide rows

# ----------------------------------------------------------------------------- attention family
from minigrad.kernels import attention as _attn  # noqa: E402  (its family, tiles and launchers live there)

ATTENTION_FORWARD = Family(**_attn.FORWARD_FAMILY)
ATTENTION_BACKWARD = Family(**_attn.BACKWARD_FAMILY)

# ----------------------------------------------------------------------------- the table
KERNELS = [
    Kernel("layernorm_forward", "layernorm.cu", {"forward": "layernorm_forward"}, LAYERNORM_FORWARD),
    Kernel("layernorm_backward", "layernorm.cu", _LN_BWD, LAYERNORM_BACKWARD),
    Kernel("layernorm_backward_twopass", "layernorm.cu", _LN_BWD_TWOPASS, LAYERNORM_BACKWARD),
    Kernel("attention_forward", "attention.cu", _attn.FORWARD_ROLES, ATTENTION_FORWARD, _attn.templates(_attn.FORWARD_TILES)),
    Kernel("attention_backward", "attention.cu", _attn.BACKWARD_ROLES, ATTENTION_BACKWARD,
           _attn.templates(_attn.BACKWARD_TILES)),
]


def get(name) -> Kernel:
    for k in KERNELS:
        if k.name == name:
            return k
    raise KeyError(f"no kernel named {name!r}; registered: {', '.join(k.name for k in KERNELS)}")


def cu_files() -> list:
    return sorted({k.cu for k in KERNELS})


def instantiations(cu) -> list:
    """Every name expression registered for `cu`, without duplicates, in registration order."""
    seen = []
    for k in KERNELS:
        if k.cu == cu:
            for n in k.instantiations:
                if n not in seen:
                    seen.append(n)
    if not seen:
        raise KeyError(f"no kernels registered for {cu}; add Kernel(...) lines to kernels/registry.py")
    return seen
