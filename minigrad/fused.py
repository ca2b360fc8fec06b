"""The one dispatch point between minigrad and kernels/: "kernel or reference?".

MINIGRAD_KERNELS=auto (default): kernels on "cuda", the NumPy reference on "cpu".
MINIGRAD_KERNELS=emulate: "cpu" tensors also run the kernels, through the CPU emulator.
MINIGRAD_KERNELS=off: the reference everywhere.
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


_launchers = None


def launchers():
    """The kernels package's launcher functions, imported on first use:
    layernorm_forward/backward and attention_forward/backward (see kernels/)."""
    global _launchers
    if _launchers is None:
        from types import SimpleNamespace

        import kernels.attention as attention
        import kernels.launch as launch
        _launchers = SimpleNamespace(
            layernorm_forward=launch.layernorm_forward, layernorm_backward=launch.layernorm_backward,
            attention_forward=attention.attention_forward, attention_backward=attention.attention_backward)
    return _launchers
