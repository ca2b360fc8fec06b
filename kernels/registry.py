"""The table of kernel families: which families exist, which kernel versions each has, and the
template instantiations every .cu file is compiled with. `minigrad kernels check | validate | bench`
iterate over it.

A family is one .cu file and the Python module next to it, which holds the family's reference,
launchers, validation cases, bench hooks and KERNELS, its versions (see kernels/family.py). Adding
a version touches only those two files; adding a family adds its module to FAMILIES below.
Family modules never import this one.
"""

from __future__ import annotations

from minigrad.kernels import attention, layernorm
from minigrad.kernels.family import instantiations as _instantiations

FAMILIES = (layernorm, attention)
KERNELS = [k for family in FAMILIES for k in family.KERNELS]


def cu_files() -> list:
    return sorted({k.cu for k in KERNELS})


def instantiations(cu) -> list:
    """Every name expression registered for `cu`, without duplicates, in registration order."""
    return _instantiations(KERNELS, cu)
