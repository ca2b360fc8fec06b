"""What a training run is asked to do: ``TrainConfig`` (the optimiser, schedule, evaluation and
worker settings, stored in every checkpoint) and the learning rate it gives each step.

Only the standard library is imported here: the command-line modules read the field names to
build and check their flags, and `minigrad --help` must stay instant.
"""
from __future__ import annotations

import math

from dataclasses import dataclass


# The compute types of a run: float32 trains as always; bfloat16 and float16 run the forward (and
# evaluation) under minigrad.autocast, the weights staying float32; float16 adds a dynamic loss
# scale (minigrad.amp.GradScaler), whose steps with an inf/NaN gradient are skipped.
DTYPES = ("float32", "bfloat16", "float16")


class TrainError(RuntimeError):
    """A user-fixable problem with the training request; the message is one line."""


@dataclass
class TrainConfig:
    max_iters: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    eval_iters: int = 20
    final_eval_iters: int = 200
    log_interval: int = 1
    seed: int = 1337
    workers: int = 2  # data-parallel workers, each computing a slice of every micro-batch (models/data_parallel.py)
    keep_best: bool = True  # keep the best-validation checkpoint beside the latest (best.json)
    dtype: str = "float32"  # float32 (no autocast), or bfloat16 / float16 under minigrad.autocast

    def check(self) -> None:
        positive = ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters",
                    "final_eval_iters", "log_interval", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup_iters"):
            if not 0 <= getattr(self, name) < math.inf:   # NaN fails both
                raise TrainError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise TrainError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrainError("AdamW betas must lie in [0, 1)")
        if self.dtype not in DTYPES:
            raise TrainError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate for update number it+1: linear warmup, cosine decay to min_lr, then flat."""
    from minigrad.optim import warmup_cosine_lr

    return warmup_cosine_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters)
