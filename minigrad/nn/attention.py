"""MultiheadAttention: self or cross attention through F.scaled_dot_product_attention."""
from __future__ import annotations

import numpy as np

from . import functional as F
from .layers import Linear
from ..tensor import Tensor
from .module import Module


class MultiheadAttention(Module):
    """Batch-first multi-head attention.

    forward(query (B, Tq, E), key (B, Tk, E) = query, value = key, key_padding_mask (B, Tk) bool with
    True = padding (PyTorch's convention), is_causal) -> (B, Tq, E).
    Self-attention uses one fused (E, 3E) projection; cross-attention projects q from the query
    and k, v (one (E, 2E) projection) from the key/value sequence.
    """

    def __init__(self, embed_dim, num_heads, bias=True, dropout=0.0, dtype=np.float32, rng=None,
                 is_causal=False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        rng = rng if rng is not None else np.random.default_rng()
        self.embed_dim, self.num_heads, self.dropout, self.is_causal = embed_dim, num_heads, dropout, is_causal
        self.q_proj = Linear(embed_dim, embed_dim, bias, dtype, rng)
        self.kv_proj = Linear(embed_dim, 2 * embed_dim, bias, dtype, rng)
        self.out_proj = Linear(embed_dim, embed_dim, bias, dtype, rng)

    def _heads(self, x):
        b, t, e = x.shape                                   # (B, T, E) -> (B, nh, T, hs)
        return x.reshape((b, t, self.num_heads, e // self.num_heads)).transpose(0, 2, 1, 3)

    def forward(self, query, key=None, value=None, key_padding_mask=None, is_causal=None):
        key = query if key is None else key
        value = key if value is None else value
        b, tq, e = query.shape
        if e != self.embed_dim or key.shape[-1] != e or value.shape[-1] != e:
            raise ValueError(f"MultiheadAttention: expected embedding size {self.embed_dim}, got query {query.shape}, "
                             f"key {key.shape}, value {value.shape}")
        q = self._heads(self.q_proj(query))
        if value is key:
            k, v = _split2(self.kv_proj(key))
        else:
            w, bias = self.kv_proj.weight, self.kv_proj.bias
            k = F.linear(key, w[:e], None if bias is None else bias[:e])
            v = F.linear(value, w[e:], None if bias is None else bias[e:])
        k, v = self._heads(k), self._heads(v)
        mask = None
        if key_padding_mask is not None:
            # a numpy array has a .data attribute too (a memoryview): test for Tensor explicitly
            kpm = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else q._xp.asarray(key_padding_mask)
            if kpm.shape != (b, key.shape[1]):
                raise ValueError(f"MultiheadAttention: key_padding_mask shape {kpm.shape} != (batch, key length) "
                                 f"{(b, key.shape[1])}")
            mask = (~kpm.astype(bool))[:, None, None, :]    # (B, 1, 1, Tk), True = attend
        causal = self.is_causal if is_causal is None else is_causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)   # (B, nh, Tq, hs)
        y = y.transpose(0, 2, 1, 3).reshape((b, tq, e))
        y = F.dropout(y, self.dropout, self.training) if self.dropout else y
        return self.out_proj(y)


def _split2(kv):
    e = kv.shape[-1] // 2
    return kv[..., :e], kv[..., e:]
