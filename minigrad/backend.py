"""The one place that picks the array module.

Every op works on ``xp = get_array_module(array)``: numpy on "cpu", cupy on "cuda",
and the strict test module (``minigrad.strict``) when the tests ask for it. No op
imports numpy for array work on its own; numpy is only used here and for host-side
metadata (dtypes, shapes).
"""
from __future__ import annotations

import numpy as np

_cupy = None          # the cupy module once imported, False when it is not available
_cupy_error = ""


def _try_cupy():
    """Import cupy lazily; remember why it failed so errors can say what is missing."""
    global _cupy, _cupy_error
    if _cupy is None:
        try:
            import cupy  # noqa: F401
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("cupy is installed but sees no CUDA device")
            _cupy = cupy
        except Exception as e:  # ImportError, CUDARuntimeError, ...
            _cupy, _cupy_error = False, f"{type(e).__name__}: {e}"
    return _cupy or None


def cuda_available() -> bool:
    return _try_cupy() is not None


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
    """'cpu' for numpy (and the strict test arrays, which stand in for a device), 'cuda' for cupy."""
    return "cuda" if type(a).__module__.startswith("cupy") else "cpu"


def xp_of(device: str):
    """The array module for a device name."""
    if device == "cpu":
        from . import strict
        return strict if strict.enabled() else np
    if device == "cuda":
        cp = _try_cupy()
        if cp is None:
            raise RuntimeError(
                "device 'cuda' needs CuPy and a CUDA GPU: install minigrad[cuda] "
                f"(e.g. pip install cupy-cuda12x) on a machine with a GPU ({_cupy_error})")
        return cp
    raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")


def check_device(device) -> str:
    if device is None:
        return "cpu"
    device = str(device)
    if device.startswith("cuda"):
        xp_of("cuda")
        return "cuda"
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    return device


def to_host(a) -> np.ndarray:
    """An explicit device-to-host copy (the only one the engine makes)."""
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
