"""Mixed precision: autocast's rounding (``autocast_apply``, ``RoundTo``) and ``GradScaler``.

Autocast, PyTorch's names (``with minigrad.autocast("bfloat16"):``, or "float16"); the state and
the op lists live in minigrad.dispatch (AUTOCAST_HALF, AUTOCAST_FLOAT32).

How a "half" op runs (MatMul, Linear, Attention, and the GPT's fused GeluMLP and QKVAttention):
every float operand goes through ``RoundTo`` (its values rounded to the half type, kept in float32
storage), the op runs as it always does (the same variant: NumPy's GEMM, the native loops, the
kernels), so products accumulate in float32, and the output goes through ``RoundTo`` too: the value
a half-type result holds. ``RoundTo``'s backward rounds the gradient the same way (the gradient of
a half-type tensor is half-typed), so the backward GEMMs also take half operands, and what reaches
a float32 parameter (the master weight) is a float32 array holding the half-type gradient. This
is exactly the rounding of a GPU's half GEMM with float32 accumulation (round to nearest even),
on any device; on the CPU it costs a few extra passes over the operands.

Where a kernel takes the half type itself (attention and the GPT's QKVAttention on "cuda", or on the
CPU under MINIGRAD_KERNELS=emulate: ``autocast_half_storage`` on the op), the op gets real half
arrays instead (``astype``, whose gradient casts back the same way) and runs the tensor-core
kernels of version 2, which also round P to the half type for the PV product.

The fused ops are rounded at their boundary only: GeluMLP's hidden activation (N, 4C) and the
attention probabilities stay float32 inside the op, as in a fused kernel that keeps them in
registers (FlashAttention keeps S in float32; it rounds P to the half type for the PV product, which
the emulation does not).

A "float32" op (LayerNorm, softmax, the losses, reductions, exp/log/pow ...) casts half-dtype
inputs (real float16/bfloat16 tensors) up to float32 first. Under autocast, float32 tensors
stay float32 everywhere else, so the residual stream and all parameters are float32.
"""
from __future__ import annotations

import math

from . import dispatch
from .ops.autocast import RoundTo, autocast_apply  # noqa: F401  (the rounding lives with the ops)


def autocast(dtype="bfloat16", enabled=True):
    """``with minigrad.amp.autocast("bfloat16"):`` (the same as ``minigrad.autocast``)."""
    return dispatch.autocast(dtype, enabled)


class GradScaler:
    """Dynamic loss scaling for float16 training, with PyTorch's method names:

        scaler = GradScaler()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)                  # before clipping; optional
        clip_grad_norm(params, 1.0)
        scaler.step(opt)                      # skipped when any gradient is inf or NaN
        scaler.update()                       # inf/NaN: scale *= backoff_factor; else after
                                              # growth_interval clean steps: scale *= growth_factor

    ``enabled=False`` makes every method a pass-through (scale 1, step always taken), so one
    training loop serves float32, bfloat16 (which needs no scaling) and float16.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must lie in (0, 1), got {backoff_factor}")
        if not (int(growth_interval) == growth_interval and growth_interval >= 1):
            raise ValueError(f"GradScaler: growth_interval must be a positive integer, got {growth_interval}")
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"GradScaler: init_scale must be a positive finite number, got {init_scale}")
        self._scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._enabled = bool(enabled)
        self._growth_tracker = 0       # clean steps since the scale last changed
        self._unscaled = set()         # ids of optimisers unscaled since the last update
        self._found_inf = None         # whether the grads of this step had an inf/NaN (None: not checked)
        self.skipped_steps = 0

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def scale(self, loss):
        """loss * scale (a Tensor op, so backward gives scaled gradients)."""
        return loss * self._scale if self._enabled else loss

    def unscale_(self, optimizer):
        """Divide the optimiser's gradients by the scale in place and note whether any is inf/NaN.
        At most once per optimiser between updates."""
        if not self._enabled:
            return
        if id(optimizer) in self._unscaled:
            raise RuntimeError("GradScaler.unscale_() was already called on this optimizer since the last update()")
        inv = 1.0 / self._scale
        finite = None           # all gradients finite so far: a 0-d array, read once (one device sync)
        for p in _params(optimizer):
            g = p.grad
            if g is None:
                continue
            g.data *= g.data.dtype.type(inv)
            ok = g._xp.isfinite(g.data).all()
            finite = ok if finite is None else finite & ok
        self._unscaled.add(id(optimizer))
        self._found_inf = bool(self._found_inf) or (finite is not None and not bool(finite))

    def step(self, optimizer, *args, **kwargs):
        """Unscale (unless done), then ``optimizer.step()`` unless a gradient is inf or NaN.
        Returns what step returned, or None when the step was skipped."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if id(optimizer) not in self._unscaled:
            self.unscale_(optimizer)
        if self._found_inf:
            self.skipped_steps += 1
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None):
        """Lower the scale after a step with inf/NaN gradients, raise it after growth_interval clean
        steps (or set ``new_scale``); starts the next step's bookkeeping."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale, self._growth_tracker = float(new_scale), 0
        elif self._found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        elif self._found_inf is not None:
            self._growth_tracker += 1
            if self._growth_tracker >= self.growth_interval:
                self._scale *= self.growth_factor
                self._growth_tracker = 0
        self._unscaled.clear()
        self._found_inf = None

    def found_inf(self) -> bool:
        """Whether the gradients unscaled for this step held an inf or NaN."""
        return bool(self._found_inf)

    def state_dict(self) -> dict:
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker} if self._enabled else {}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self._scale = float(state["scale"])
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
        self._growth_tracker = int(state.get("_growth_tracker", 0))


def _params(optimizer):
    """The parameters an optimiser updates (its param_groups, as minigrad.optim and PyTorch keep them)."""
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(f"GradScaler: {type(optimizer).__name__} has no param_groups")
    return [p for g in groups for p in g["params"]]
