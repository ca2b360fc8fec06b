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


def launchers():
    """The kernels package's launcher functions (imported on first use; looked up on every call,
    so a test can swap one): layernorm_forward/backward and attention_forward/backward."""
    from types import SimpleNamespace

    import kernels.attention as attention
    import kernels.launch as launch
    return SimpleNamespace(
        layernorm_forward=launch.layernorm_forward, layernorm_backward=launch.layernorm_backward,
        attention_forward=attention.attention_forward, attention_backward=attention.attention_backward)
