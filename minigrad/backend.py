"""The one place that picks the array module.

Every op works on ``xp = get_array_module(array)``: numpy on "cpu", cupy on "cuda",
and the strict test module (``minigrad.strict``) when the tests ask for it. No op
imports numpy for array work on its own; numpy is only used here and for host-side
metadata (dtypes, shapes).

The default device: host data (Python numbers and lists, numpy arrays) given to a Tensor
without ``device=`` lands on ``get_default_device()``, "cpu" unless ``set_default_device``
(or ``with default_device("cuda"):``) says otherwise. Device arrays (cupy) stay where they are.
``python -m pytest --device cuda`` runs the suites this way.

The strict module stands in for a device in two ways (tests only; ``MINIGRAD_STRICT``):
  =1     every "cpu" tensor holds StrictArrays (NumPy-only code fails as it would on CuPy);
  =cuda  "cuda" is served by the strict module instead of CuPy and "cpu" stays NumPy, so the
         device machinery (default device, .to("cuda"), variant choice by device) runs on a
         machine without a GPU: ``MINIGRAD_STRICT=cuda python -m pytest --device cuda``.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

_cupy = None          # the cupy module once imported, False when it is not available
_cupy_error = ""


def _try_cupy():
    """Import cupy lazily; remember why it failed so errors can say what is missing."""
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("cupy is installed but sees no CUDA device")
            _cupy = cupy
        except Exception as e:  # ImportError, CUDARuntimeError, ...
            _cupy, _cupy_error = False, f"{type(e).__name__}: {e}"
    return _cupy or None


def strict_stands_in_for_cuda() -> bool:
    """Whether MINIGRAD_STRICT=cuda made the strict test module serve device "cuda" (read once)."""
    return _strict_cuda


_strict_cuda = os.environ.get("MINIGRAD_STRICT", "").strip().lower() == "cuda"


def cuda_available() -> bool:
    return _strict_cuda or _try_cupy() is not None


_default_device = "cpu"


def get_default_device() -> str:
    """Where a Tensor made from host data without ``device=`` goes ("cpu" unless set)."""
    return _default_device


def set_default_device(device) -> str:
    """Set the default device ("cpu" or "cuda"; "cuda" needs a GPU); returns the previous one."""
    global _default_device
    device = check_device(device)
    prev, _default_device = _default_device, device
    return prev


@contextlib.contextmanager
def default_device(device):
    """``with default_device("cuda"):`` tensors made from host data inside land on the GPU."""
    prev = set_default_device(device)
    try:
        yield
    finally:
        set_default_device(prev)


def is_device_array(a) -> bool:
    """Whether ``a`` is an array of a device module (cupy; the strict stand-in under MINIGRAD_STRICT=cuda),
    as opposed to host data (numpy arrays and scalars, Python numbers and lists)."""
    mod = type(a).__module__
    return mod.startswith("cupy") or (_strict_cuda and mod == "minigrad.strict")


def get_array_module(a):
    """numpy, cupy or the strict test module, from the array's type."""
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return _try_cupy()
    if mod == "minigrad.strict":
        from . import strict
        return strict
    return np


def device_of(a) -> str:
    """'cuda' for cupy arrays, 'cpu' for numpy. The strict test arrays report 'cpu', or 'cuda'
    under MINIGRAD_STRICT=cuda."""
    return "cuda" if is_device_array(a) else "cpu"


def xp_of(device: str):
    """The array module for a device name."""
    if device == "cpu":
        from . import strict
        return strict if strict.enabled() and not _strict_cuda else np
    if device == "cuda":
        if _strict_cuda:
            from . import strict
            return strict
        cp = _try_cupy()
        if cp is None:
            raise RuntimeError(
                "device 'cuda' needs CuPy and a CUDA GPU: install minigrad[cuda13] (CUDA 13 driver) or "
                f"minigrad[cuda12] (CUDA 12) on a machine with a GPU ({_cupy_error})")
        return cp
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def check_device(device) -> str:
    """'cpu' or 'cuda' from a device name ('cuda:0' is 'cuda'; None is the default device)."""
    if device is None:
        return _default_device
    device = str(device)
    if device.startswith("cuda"):
        xp_of("cuda")
        return "cuda"
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    return device


# ---------------------------------------------------------------- checks of device data, read later
# An op that validates its input's values (an index in range, a class target below C) needs to read
# them; on a GPU each such read stalls the host until the device catches up. On "cpu" the check
# raises at once. On "cuda" the op computes the check on the device (a 0-d bool, true when the input
# is bad), files it here and goes on; the checks are read together, once, later: at the next
# ``to_host`` (an explicit copy), in the distributed gradient allreduce's small info vector, or by
# ``raise_deferred_checks()``; a loss op folds the pending checks into its value (NaN when one
# failed, see ``fold_deferred_checks``), so the step's one read of its loss shows a failure too.
# At most _DEFERRED_MAX stay filed: then the oldest folded one is dropped (its loss showed it), or,
# when none was folded, all are read at once.
_DEFERRED_MAX = 64
_deferred: list = []          # [[0-d device bool, message(): str, folded into a loss yet?]]


def check_values(bad, message, device: str) -> None:
    """Raise IndexError(message()) when ``bad`` (a 0-d bool array: the input is bad) is true: at once
    on "cpu"; on "cuda" when the deferred checks are next read (no read now). ``message`` may read
    the device: it is called only for a failed check."""
    if device != "cuda":
        if bool(bad):
            raise IndexError(message())
        return
    if len(_deferred) >= _DEFERRED_MAX:   # nothing read them for long (a training loop reads only its loss)
        if _deferred[0][2]:
            del _deferred[0]              # folded into a loss long ago: a failure made that loss NaN
        else:
            raise_deferred_checks()       # never folded: read them all now (one read)
    _deferred.append([bad, message, False])


def fold_deferred_checks():
    """A 0-d device bool: some check filed since the last fold failed (None when none was filed).
    A loss op makes its value NaN where this is true; the checks stay filed for their messages."""
    fresh = [c for c in _deferred if not c[2]]
    if not fresh:
        return None
    flag = fresh[0][0]
    for c in fresh[1:]:
        flag = flag | c[0]
    for c in fresh:
        c[2] = True
    return flag


def deferred_flags():
    """The filed checks' flags as one device vector (None when none is filed), to be read with other
    values; then ``raise_deferred_checks(host_values)``."""
    if not _deferred:
        return None
    xp = get_array_module(_deferred[0][0])
    return xp.stack([c[0] for c in _deferred]).reshape(-1)


def raise_deferred_checks(flags=None) -> None:
    """Read the filed checks (``flags``: deferred_flags() already read to the host, else read here,
    once) and forget them; raise the first failed one's IndexError."""
    global _deferred
    if not _deferred:
        return
    checks, _deferred = _deferred, []
    if flags is None:
        xp = get_array_module(checks[0][0])
        flags = host_copy(xp.stack([c[0] for c in checks]).reshape(-1))
    for (_, message, _), failed in zip(checks, flags):
        if failed:
            raise IndexError(message())


def to_host(a) -> np.ndarray:
    """An explicit device-to-host copy (the only one the engine makes); reports the deferred checks
    of device data first (one read for all of them)."""
    if _deferred:
        raise_deferred_checks()
    return host_copy(a)


def host_copy(a) -> np.ndarray:
    """A device-to-host copy that leaves the deferred checks filed (a caller that reads them with it)."""
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return a.get()
    if mod == "minigrad.strict":
        return a.unwrap().copy()
    return np.array(a, copy=True)


def to_device(a, device: str):
    """Move an array to a device; a no-op when it is already there."""
    if device_of(a) == device and get_array_module(a) is xp_of(device):
        return a
    host = to_host(a)
    return xp_of(device).asarray(host)


# ---------------------------------------------------------------- dtypes: the half types (issue 15)
# float16 is NumPy's own. bfloat16 comes from the optional package ml_dtypes (extras "dev" and
# "train"), imported on first use. Its NumPy dtype has kind "V", not "f": ask ``is_float``.
HALF_TYPES = ("float16", "bfloat16")
_bf16 = None


def bfloat16():
    """The NumPy dtype of ml_dtypes.bfloat16 (a one-line error when ml_dtypes is missing)."""
    global _bf16
    if _bf16 is None:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 needs the ml_dtypes package: pip install ml_dtypes "
                            "(or minigrad[train])") from None
        _bf16 = np.dtype(ml_dtypes.bfloat16)
    return _bf16


def as_dtype(dtype) -> np.dtype:
    """A NumPy dtype from a name, a type or a dtype; "bfloat16"/"bf16" need ml_dtypes."""
    if isinstance(dtype, str) and dtype.strip().lower() in ("bfloat16", "bf16"):
        return bfloat16()
    if isinstance(dtype, str) and dtype.strip().lower() in ("half", "fp16"):
        return np.dtype(np.float16)
    return np.dtype(dtype)


def is_float(dtype) -> bool:
    """Whether arrays of this dtype are floating point: kinds "f" and "c", and bfloat16."""
    return dtype.kind in "fc" or dtype.name == "bfloat16"


def round_to_half(a, name: str):
    """float32 array ``a`` with every value rounded (to nearest, ties to even) to the half type
    ``name`` ("bfloat16" or "float16"), kept in float32 storage: the values a half-type operand
    holds. bfloat16 keeps float32's exponent and 8 significant bits, so it is done on the bits
    (no ml_dtypes needed, NumPy and CuPy alike); float16 overflows to ±inf past 65504."""
    xp = get_array_module(a)
    if name == "float16":
        return a.astype(np.float16).astype(np.float32)
    u = xp.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))   # round half to even at bit 16
    r &= np.uint32(0xFFFF0000)
    out = r.view(np.float32)
    nan = xp.isnan(a)                        # a NaN's payload could carry into the sign: keep it as it is
    if nan.any():
        out[nan] = a[nan]
    return out
