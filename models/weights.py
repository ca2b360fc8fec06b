"""`--weights float32|bfloat16|int8` of the inference commands (generate, eval, bench generate).

float32 keeps the model as trained. bfloat16 and int8 are weight-only quantization for inference
by `minigrad.nn.quantize_` (the Linear layers and the tied head; activations stay float32).
"""
from __future__ import annotations

WEIGHTS = ("float32", "bfloat16", "int8")


class WeightsError(ValueError):
    """A bad --weights value or a quantization that cannot run; the message is one line."""


def apply_weights(model, weights: str, group_size: int | None = None):
    """Quantize `model` in place for inference as `weights` says; returns the model."""
    if weights not in WEIGHTS:
        raise WeightsError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "float32":
        return model
    from minigrad.nn import quantize_

    quantize_(model, weights, group_size=group_size)
    return model

