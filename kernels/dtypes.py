"""The 16-bit float types on the host side, for the version-2 kernels (kernels/*_v2.cu).

The kernels keep half types as raw 16-bit storage (struct mg_half / mg_bf16 in the .cu files, no
cuda_fp16.h). On the host:

    float16    numpy.float16 (native)
    bfloat16   ml_dtypes.bfloat16 when ml_dtypes is installed; raw bits in a uint16 array anywhere
               (CuPy and NumPy without ml_dtypes). In minigrad.kernels a uint16 array handed to a
               kernel launcher IS bfloat16 bits: no launcher takes integers for anything else.

    BFLOAT16                  np.dtype(ml_dtypes.bfloat16), or np.dtype(np.uint16) without ml_dtypes:
                              the dtype the workbench makes bfloat16 inputs in
    kind(a_or_dtype)          "half" | "bf16" | "float" | "double" | None
    name(dtype)               "float16", "bfloat16" (uint16 too), "float32", "float64"
    to_float32(a) / to_float64(a)     exact widening of any supported array (numpy or cupy)
    from_float(x, dtype)      round-to-nearest-even to `dtype` (numpy or cupy float array)
    to_device(xp, a)          a host array on xp (cupy: bfloat16 goes as uint16 bits)
    eps(dtype)                machine epsilon (2^-10 for float16, 2^-7 for bfloat16, ...)

Rounding here is what the kernels' conversions do (cvt.rn on the GPU, kernels/emulate/cuda_emu.h on
the CPU): round to nearest, ties to even; NaN stays NaN.
"""

from __future__ import annotations

import numpy as np

try:
    import ml_dtypes as _ml_dtypes
except ImportError:  # optional: raw uint16 bits instead
    _ml_dtypes = None

FLOAT16 = np.dtype(np.float16)
UINT16 = np.dtype(np.uint16)
ML_BFLOAT16 = np.dtype(_ml_dtypes.bfloat16) if _ml_dtypes is not None else None
BFLOAT16 = ML_BFLOAT16 if ML_BFLOAT16 is not None else UINT16
HALF_KINDS = ("half", "bf16")
EPS = {"half": 2.0 ** -10, "bf16": 2.0 ** -7, "float": 2.0 ** -23, "double": 2.0 ** -52}


def kind(a) -> str | None:
    """The kernel scalar kind of an array or dtype: half, bf16, float, double, or None."""
    if a is None or isinstance(a, (bool, int, float)):
        return None
    try:
        dt = np.dtype(a.dtype if hasattr(a, "dtype") and not isinstance(a, type) else a)
    except TypeError:
        return None
    if dt == FLOAT16:
        return "half"
    if dt == UINT16 or (ML_BFLOAT16 is not None and dt == ML_BFLOAT16):
        return "bf16"
    if dt == np.float32:
        return "float"
    if dt == np.float64:
        return "double"
    return None


def name(dtype) -> str:
    """Printable name: bfloat16 raw storage (uint16) prints as bfloat16."""
    k = kind(dtype)
    return "bfloat16" if k == "bf16" else np.dtype(dtype).name


def eps(dtype) -> float:
    return EPS[kind(dtype)]


def _xp(a):
    return np if isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__") else __import__("cupy")


def _bf16_bits_to_float32(bits, xp):
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def _float32_to_bf16_bits(x, xp):
    """Round-to-nearest-even float32 -> bfloat16 bits (uint16); NaN -> 0x7fff (PTX's canonical NaN)."""
    u = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (u + xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1))) >> 16
    nan = (u & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000)
    return xp.where(nan, xp.uint32(0x7FFF), rounded).astype(xp.uint16)


def to_float32(a):
    """Exact float32 copy of a float16 / bfloat16 / uint16 (bfloat16 bits) / float32 array."""
    xp = _xp(a)
    if kind(a) == "bf16":
        bits = a if a.dtype == UINT16 else a.view(xp.uint16)
        return _bf16_bits_to_float32(bits, xp)
    return a.astype(xp.float32)


def to_float64(a):
    """Exact float64 copy of any array the kernels take (bool and integer arrays other than uint16 pass)."""
    if kind(a) == "bf16":
        return to_float32(a).astype(np.float64)
    if getattr(a, "dtype", None) is not None and a.dtype.kind == "f":
        return a.astype(np.float64)
    return a


def from_float(x, dtype):
    """x (float array) rounded to `dtype`, to nearest with ties to even. bfloat16 comes as ml_dtypes
    bfloat16 for a numpy array when `dtype` is that, else as uint16 bits (a float64 x is rounded to
    float32 first on that path); float16/float32/float64 by the array library's cast."""
    xp = _xp(x)
    dt = np.dtype(dtype)
    if kind(dt) == "bf16":
        if dt == ML_BFLOAT16 and xp is np:
            return x.astype(dt)
        return _float32_to_bf16_bits(x, xp)
    return x.astype(dt)


def to_device(xp, a):
    """A host (numpy) array on the array module xp. CuPy gets bfloat16 as its uint16 bits."""
    if xp is np or not isinstance(a, np.ndarray):
        return a
    if kind(a) == "bf16" and a.dtype != UINT16:
        a = a.view(np.uint16)
    return xp.asarray(a)


def to_host(a):
    """A numpy array from a numpy or cupy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
