"""What the model config dataclasses share: validation and a JSON round trip (stored in checkpoints)."""
from __future__ import annotations

from dataclasses import asdict, fields


class ModelConfig:
    """Mixin for a model-config dataclass. Subclasses name their positive-integer fields in
    ``_positive_ints``; every config has n_embd, n_head and dropout."""

    _positive_ints: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for f in self._positive_ints:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}.{f} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
        return cls(**d)
