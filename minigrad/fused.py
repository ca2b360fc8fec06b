"""The one dispatch point between minigrad and kernels/: "kernel or reference?".

MINIGRAD_KERNELS=auto (default): kernels on "cuda", the NumPy reference on "cpu".
MINIGRAD_KERNELS=emulate: "cpu" tensors also run the kernels, through the CPU emulator.
MINIGRAD_KERNELS=off: the reference everywhere.
MINIGRAD_CPU_NATIVE=0: turns off the native CPU loops (cpu_native) that the NumPy reference uses by default.
"""
from __future__ import annotations

import os

_MODES = ("auto", "emulate", "off")


def kernel_mode() -> str:
    mode = os.environ.get("MINIGRAD_KERNELS", "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"MINIGRAD_KERNELS={mode!r}: expected one of {', '.join(_MODES)}")
    return mode


def use_kernels(device: str) -> bool:
    mode = kernel_mode()
    if mode == "off":
        return False
    return device == "cuda" or (device == "cpu" and mode == "emulate")


def launchers():
    """The kernels package's launcher functions (imported on first use; looked up on every call,
    so a test can swap one): layernorm_forward/backward and attention_forward/backward."""
    from types import SimpleNamespace

    import minigrad.kernels.attention as attention
    import minigrad.kernels.layernorm as launch
    return SimpleNamespace(
        layernorm_forward=launch.layernorm_forward, layernorm_backward=launch.layernorm_backward,
        attention_forward=attention.attention_forward, attention_backward=attention.attention_backward)


def cpu_native(*arrays):
    """The native CPU library (kernels/cpu/native.py: compiled at first use), or None.

    None when MINIGRAD_CPU_NATIVE=0 (read on every call), when the library cannot be built (one
    warning says why), or when any of ``arrays`` (None entries ignored) is not a C-contiguous
    numpy.ndarray of one dtype, float32 or float64: the caller then runs its NumPy code.
    """
    global _native
    if os.environ.get("MINIGRAD_CPU_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    if _native is None:
        try:
            from minigrad.kernels.cpu import native
        except ImportError:
            return None
        _native = native
    if arrays and not _native.eligible(*arrays):
        return None
    return _native.load()


_native = None   # kernels.cpu.native, imported at the first cpu_native() call
