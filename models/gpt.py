"""A decoder-only GPT built from minigrad.nn: pre-LayerNorm blocks, causal attention, tied head.

Shapes: B batch, T tokens in this call, Tk tokens attended to (T, or cached + T), C = n_embd,
nh = n_head, hs = C // nh, V = vocab_size. The residual stream is (B, T, C); each Linear folds
B and T into rows, so it is still one 2-D GEMM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import minigrad
import minigrad.nn.functional as F
from minigrad import hugepages, nn
from minigrad.models.config import ModelConfig


@dataclass
class GPTConfig(ModelConfig):
    vocab_size: int = 84
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False

    _positive_ints = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")


class KVCache:
    """Keys and values of the tokens seen so far, preallocated to block_size per layer.

    buf: (n_layer, 2, B, nh, block_size, hs); the first `length` positions are valid. On the host it
    lies on huge pages (minigrad.hugepages): a decode step streams all of it at a long context.
    """

    def __init__(self, config: GPTConfig, batch_size: int, xp=np, dtype=np.float32):
        hs = config.n_embd // config.n_head
        self.block_size = config.block_size
        shape = (config.n_layer, 2, batch_size, config.n_head, config.block_size, hs)
        self.buf = hugepages.zeros(shape, dtype) if xp is np else xp.zeros(shape, dtype=dtype)
        self.length = 0

    def extend(self, layer: int, k, v):
        """Store k, v (B, nh, T, hs) after the cached ones; return all keys and values (B, nh, Tk, hs)."""
        t0, t1 = self.length, self.length + k.shape[2]
        if t1 > self.block_size:
            raise ValueError(f"KV cache holds {self.block_size} positions; {t1} requested")
        self.buf[layer, 0, :, :, t0:t1] = k.data
        self.buf[layer, 1, :, :, t0:t1] = v.data
        return minigrad.Tensor(self.buf[layer, 0, :, :, :t1]), minigrad.Tensor(self.buf[layer, 1, :, :, :t1])

    def store(self, layer: int, qkv) -> None:
        """Keep the keys and values of a prefill from the packed projection qkv (B, T, 3C) at
        positions 0..T-1 (the caller attends with the fused op, as without a cache)."""
        B, T, C3 = qkv.shape
        nh, hs = self.buf.shape[3], self.buf.shape[5]
        if T > self.block_size:
            raise ValueError(f"KV cache holds {self.block_size} positions; {T} requested")
        kv = qkv[:, :, C3 // 3:].reshape(B, T, 2, nh, hs).transpose(2, 0, 3, 1, 4)   # (2, B, nh, T, hs)
        self.buf[layer, :, :, :, :T] = kv


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, rng: np.random.Generator):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout, generator=rng)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        """x: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        nh = self.n_head
        if cache is None or cache.length == 0:   # one fused op on the CPU; the attention kernels on a GPU
            qkv = self.c_attn(x)  # (B, T, 3C)
            if cache is not None:   # a prefill: the same attention as without a cache, k and v kept
                cache.store(layer, qkv.data)
            y = F.qkv_self_attention(qkv, nh, is_causal=True)  # (B, T, 3C) -> (B, T, C)
            return self.resid_drop(self.c_proj(y))
        qkv = self.c_attn(x).reshape(B, T, 3, nh, C // nh).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, nh, T, hs)
        k, v = cache.extend(layer, k, v)  # (B, nh, Tk, hs)
        # is_causal is bottom-right aligned: query i (of T) sees keys j <= i + Tk - T.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, rng: np.random.Generator):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout, generator=rng)

    def forward(self, x):  # (B, T, C) -> (B, T, C): c_proj(gelu(c_fc(x))), one op on the CPU
        B, T, C = x.shape
        if not isinstance(self.c_fc, nn.Linear):   # quantized (minigrad.nn.quantize): the two layers
            return self.drop(self.c_proj(F.gelu(self.c_fc(x))))
        y = F.gelu_mlp(x.reshape(B * T, C), self.c_fc.weight, self.c_fc.bias, self.c_proj.weight,
                       self.c_proj.bias)  # the fused op takes rows: (B*T, C)
        return self.drop(y.reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, rng: np.random.Generator):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, rng)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, rng)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        """x: (B, T, C) -> (B, T, C); with a cache, x continues the cached tokens."""
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, seed: int = 0):
        super().__init__()
        self.config = config
        # One generator feeds every Dropout, so a checkpoint can save and restore the stream.
        self.dropout_rng = np.random.default_rng([seed, 0xD50])
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # (V, C), tied to the output head
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # (block_size, C)
        self.drop = nn.Dropout(config.dropout, generator=self.dropout_rng)
        self.h = nn.ModuleList([Block(config, self.dropout_rng) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = None  # the head is wte.weight; nn.quantize_ puts a quantized copy of it here
        self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections / sqrt(2 n_layer)."""
        rng = np.random.default_rng(seed)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.startswith("ln_") or ".ln_" in name:
                continue  # LayerNorm keeps weight 1, bias 0
            if name.endswith("bias"):
                std = 0.0
            elif name.endswith("c_proj.weight"):
                std = proj_std
            else:
                std = 0.02
            host = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(std)
            p.data[...] = p._xp.asarray(host)

    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def forward(self, idx, targets=None, cache: KVCache | None = None, last_only: bool = False):
        """idx: (B, T) int token ids. Returns (logits, loss).

        logits: (B, T, V), or (B, 1, V) when last_only. loss: mean cross-entropy vs targets (B, T),
        or None. With a cache, idx continues the cached sequence and positions start after it.
        """
        idx_data = idx.data if isinstance(idx, minigrad.Tensor) else idx
        B, T = idx_data.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        xp = self.wte.weight._xp
        V = self.config.vocab_size
        tok = self.wte(minigrad.Tensor(xp.asarray(idx_data)))  # (B, T, C)
        pos = self.wpe.weight[start:start + T]  # (T, C): rows start..start+T-1, a slice (cheap backward)
        x = self.drop(tok + pos)  # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
            T = 1
        x = self.ln_f(x)
        # (B, T, V): the head tied to the embedding, or its quantized copy
        logits = F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)
        if targets is None:
            return logits, None
        tgt = targets.data if isinstance(targets, minigrad.Tensor) else targets
        loss = F.cross_entropy(logits.reshape(B * T, V), minigrad.Tensor(xp.asarray(tgt).reshape(B * T)))
        return logits, loss
