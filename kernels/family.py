"""What a family module declares: its kernel versions (Kernel) and, per operation, the workbench
hooks that `minigrad kernels validate | bench` call (Operation).

A family is one .cu file and the Python module next to it (layernorm.cu + layernorm.py). The module
lists its versions in KERNELS; kernels/registry.py collects every family's KERNELS into the table.

    Kernel(name, cu, roles, op, templates=FLOATS, version=1, launch=None)

    name       unique label printed by check/validate/bench, e.g. "layernorm_forward"
    cu         the .cu file in kernels/
    roles      {role: __global__ function name}: the kernels one call of this version launches;
               op.run passes the dict to the family's launcher (its kernels= argument)
    op         an Operation (below), shared by all versions of one operation (e.g. layernorm backward)
    templates  template argument lists; each role is instantiated as f"{fn}<{t}>" for every t
               (for tile-templated kernels e.g. ("float, 64", "double, 64"))
    version    the rung of the family's ladder (1: the float32/float64 kernels, 2: tensor cores and
               half types); `bench --version` selects by it
    launch     launch(instantiation) -> (threads per block, dynamic shared bytes) of a typical launch,
               for the occupancy column of `minigrad kernels check` (None: not reported)

Operation fields:
    run(kernel, inputs) -> dict of outputs    launches the version (numpy inputs: emulator; cupy: GPU)
    reference(inputs) -> dict of outputs      NumPy/CuPy reference with the same keys
    make_inputs(xp, rng, case, dtype) -> dict inputs for one case (xp is numpy or cupy)
    cases                                     validate cases (small: they run on the emulator)
    dtypes                                    dtypes validated (default float32, float64; bfloat16 is
                                              kernels.dtypes.BFLOAT16)
    tolerance {dtype: rel}                    max |out - ref| / max |ref| allowed per output; a value may
                                              be a function (float64 inputs, float64 reference outputs)
                                              -> {output: rel}, a bound derived per case (see tolerance())
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


def tolerance(op, dtype, inputs64, ref) -> dict:
    """{output: allowed max |out - ref| / max |ref|} of `op` in `dtype` for one case, from its float64
    inputs and reference outputs (a per-case bound when the op's tolerance for dtype is a function)."""
    tol = op.tolerance[np.dtype(dtype)]
    if callable(tol):
        return tol(inputs64, ref)
    return {key: tol for key in ref}


@dataclasses.dataclass(frozen=True)
class Operation:
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
    op: Operation
    templates: tuple = FLOATS
    version: int = 1
    launch: Callable | None = None

    @property
    def instantiations(self) -> tuple:
        return tuple(f"{fn}<{t}>" for fn in self.roles.values() for t in self.templates)


def instantiations(kernels, cu) -> list:
    """Every name expression the versions in `kernels` register for `cu`, without duplicates, in order."""
    seen = []
    for k in kernels:
        if k.cu == cu:
            for n in k.instantiations:
                if n not in seen:
                    seen.append(n)
    if not seen:
        raise KeyError(f"no kernels registered for {cu}; add Kernel(...) lines to its family's KERNELS")
    return seen


def select(kernels, names=None) -> list:
    """The kernels a command line names: all when `names` is empty; those whose name equals one of
    `names` when any does (`layernorm_forward` is version 1 alone); else those whose name contains
    one (`_v2`, `attention`)."""
    kernels = list(kernels)
    if not names:
        return kernels
    exact = [k for k in kernels if k.name in names]
    return exact or [k for k in kernels if any(n in k.name for n in names)]
