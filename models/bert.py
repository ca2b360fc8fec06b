"""A BERT encoder (post-LayerNorm, GELU, token-type embeddings, padding mask) and its weight loader.

Module and parameter names mirror Hugging Face's BertModel, so a `model.safetensors` written by
transformers loads name for name: `embeddings.word_embeddings.weight`,
`encoder.layer.{i}.attention.self.query.weight`, ... Shapes: B batch, T tokens, C hidden_size,
nh heads, hs = C // nh, I intermediate_size. The hidden states are (B, T, C); each Linear folds
B and T into rows, so it is a single 2-D GEMM (NumPy's batched 3-D matmul is several times slower).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

import minigrad
import minigrad.nn.functional as F
from minigrad import nn

# Tensors a BertModel checkpoint may hold that this encoder does not use.
IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids", "cls.")
_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class WeightsError(ValueError):
    """Weights that do not fit the model (names the tensor and both shapes); one line."""


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig: hidden_act {self.hidden_act!r} is not supported "
                             f"(one of {', '.join(_ACTIVATIONS)})")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"BertConfig: layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def from_json(cls, path) -> BertConfig:
        """Read a transformers config.json; fields this encoder does not model are ignored, but a
        position_embedding_type other than "absolute" is refused."""
        d = json.loads(Path(path).read_text())
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type {d['position_embedding_type']!r} is not supported")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        C = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, C)            # (V, C)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)

    def forward(self, ids, type_ids):
        """ids, type_ids: (B, T) int arrays -> (B, T, C)."""
        T = ids.shape[1]
        xp = self.word_embeddings.weight._xp
        pos = xp.arange(T)
        x = self.word_embeddings(ids) + self.position_embeddings(pos) + self.token_type_embeddings(type_ids)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        C = cfg.hidden_size
        self.nh = cfg.num_attention_heads
        self.query = nn.Linear(C, C)
        self.key = nn.Linear(C, C)
        self.value = nn.Linear(C, C)

    def forward(self, x, mask):
        """x (B, T, C), mask (B, 1, 1, T) bool, True = a real token -> (B, T, C)."""
        B, T, C = x.shape
        hs = C // self.nh

        def heads(t):  # (B, T, C) -> (B, nh, T, hs)
            return t.reshape(B, T, self.nh, hs).transpose(0, 2, 1, 3)

        y = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                           attn_mask=mask)          # (B, nh, T, hs)
        return y.transpose(0, 2, 1, 3).reshape(B, T, C)


class BertSelfOutput(nn.Module):
    """Post-LN: LayerNorm(residual + dense(h))."""

    def __init__(self, cfg: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h, residual):
        return self.LayerNorm(residual + self.dense(h))


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.approximate = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):  # (B, T, C) -> (B, T, I)
        return F.gelu(self.dense(x), self.approximate)


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x, mask):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertModel(nn.Module):
    """forward(input_ids (B, T), attention_mask (B, T) 1 = token 0 = padding, token_type_ids) -> (B, T, C)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        xp = self.embeddings.word_embeddings.weight._xp
        ids = xp.asarray(input_ids.data if isinstance(input_ids, minigrad.Tensor) else input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"BertModel: input_ids must be a (batch, tokens) integer array, got "
                             f"{ids.dtype} {tuple(ids.shape)}")
        B, T = ids.shape
        cfg = self.config
        if T > cfg.max_position_embeddings:
            raise ValueError(f"BertModel: {T} tokens exceed max_position_embeddings {cfg.max_position_embeddings}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
            raise ValueError(f"BertModel: token ids must lie in [0, {cfg.vocab_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        types = xp.zeros_like(ids) if token_type_ids is None else xp.asarray(token_type_ids)
        am = xp.ones((B, T), bool) if attention_mask is None else xp.asarray(attention_mask).astype(bool)
        for name, a in (("token_type_ids", types), ("attention_mask", am)):
            if a.shape != (B, T):
                raise ValueError(f"BertModel: {name} has shape {tuple(a.shape)}, input_ids {(B, T)}")
        return self.encoder(self.embeddings(ids, types), am[:, None, None, :])   # (B, T, C)


def load_weights(model: BertModel, tensors: dict, source="weights") -> None:
    """Copy a {name: array} BertModel state (e.g. from safetensors) into `model`.

    Every parameter of the model must be present with its exact shape; tensors listed in
    IGNORED_PREFIXES may be present and are skipped; anything else is an error. Errors name the
    tensor and both shapes, and nothing is copied unless everything fits.
    """
    own = model.state_dict()
    for name, want in own.items():
        if name not in tensors:
            raise WeightsError(f"{source}: tensor {name} is missing (the model expects shape {tuple(want.shape)})")
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise WeightsError(f"{source}: tensor {name} has shape {tuple(got.shape)} but the model "
                               f"(its config) expects {tuple(want.shape)}")
        if np.dtype(got.dtype).kind != "f":
            raise WeightsError(f"{source}: tensor {name} has dtype {got.dtype}, expected floating point")
    extra = sorted(k for k in tensors if k not in own and not k.startswith(IGNORED_PREFIXES))
    if extra:
        raise WeightsError(f"{source}: tensors the model does not have: {', '.join(extra[:4])}"
                           f"{' ...' if len(extra) > 4 else ''}")
    model.load_state_dict({k: tensors[k] for k in own})
