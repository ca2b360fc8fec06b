"""An encoder-decoder transformer (pre-LayerNorm), greedy decoding and beam search, with a KV cache.

Encoder: self-attention over the source with a key padding mask, then a GELU MLP.
Decoder: causal self-attention, cross-attention to the encoder output (Tq != Tk, the same
padding mask), then a GELU MLP. Every attention goes through F.scaled_dot_product_attention.
Token embeddings are shared by source, target and the output head (one character vocabulary).

Shapes: B batch, S source tokens, T decoder tokens in this call, Tk decoder tokens attended to
(T, or cached + T), C = n_embd, nh = n_head, hs = C // nh, V = vocab_size. Residual streams are
(B, S, C) and (B, T, C); each Linear folds the leading dims into rows, so it is one 2-D GEMM.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import minigrad
import minigrad.nn.functional as F
from minigrad import nn
from minigrad.models.config import ModelConfig
from minigrad.models.tasks import BOS, EOS, IGNORE, PAD


@dataclass
class Seq2SeqConfig(ModelConfig):
    vocab_size: int = 40
    max_len: int = 32          # positions, for the source and for the decoder input
    n_layer: int = 2           # encoder layers, and as many decoder layers
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True

    _positive_ints = ("vocab_size", "max_len", "n_layer", "n_head", "n_embd")


class DecoderCache:
    """Decoder state for incremental decoding.

    self_kv[l]: (k, v) of the tokens decoded so far, each (B, nh, Tk, hs) arrays.
    cross_kv[l]: (k, v) of the encoder output, each (B, nh, S, hs), computed on first use.
    """

    def __init__(self, n_layer: int):
        self.self_kv = [None] * n_layer
        self.cross_kv = [None] * n_layer
        self.length = 0

    def extend(self, layer: int, k, v):
        """Append k, v (B, nh, T, hs) Tensors; return all keys and values (B, nh, Tk, hs) as Tensors."""
        old = self.self_kv[layer]
        if old is not None:
            xp = k._xp
            k, v = minigrad.Tensor(xp.concatenate([old[0], k.data], 2)), minigrad.Tensor(xp.concatenate([old[1], v.data], 2))
        self.self_kv[layer] = (k.data, v.data)
        return k, v

    def reorder(self, rows) -> None:
        """Keep hypotheses `rows` (beam search): index the batch axis of every cached array."""
        from minigrad.backend import get_array_module

        arrays = [kv[0] for kv in self.self_kv + self.cross_kv if kv is not None]
        if arrays:
            rows = get_array_module(arrays[0]).asarray(rows)
        self.self_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.self_kv]
        self.cross_kv = [None if kv is None else (kv[0][rows], kv[1][rows]) for kv in self.cross_kv]


class Attention(nn.Module):
    """Multi-head attention; self (kv from x) or cross (kv from memory)."""

    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator):
        super().__init__()
        C = cfg.n_embd
        self.nh = cfg.n_head
        self.q_proj = nn.Linear(C, C, bias=cfg.bias)
        self.kv_proj = nn.Linear(C, 2 * C, bias=cfg.bias)            # fused k, v
        self.out_proj = nn.Linear(C, C, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout, generator=rng)

    def kv(self, src):
        """src (B, Tk, C) -> k, v each (B, nh, Tk, hs)."""
        B, Tk, C = src.shape
        kv = self.kv_proj(src).reshape(B, Tk, 2, self.nh, C // self.nh).transpose(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(self, x, k, v, mask=None, is_causal=False):
        """x (B, T, C) queries; k, v (B, nh, Tk, hs); mask (B, 1, 1, Tk) bool True = attend -> (B, T, C)."""
        B, T, C = x.shape
        q = self.q_proj(x).reshape(B, T, self.nh, C // self.nh).transpose(0, 2, 1, 3)   # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, nh, T, hs)
        return self.drop(self.out_proj(y.transpose(0, 2, 1, 3).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, cfg: Seq2SeqConfig, rng: np.random.Generator):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout, generator=rng)

    def forward(self, x):  # (B, T, C) -> (B, T, C): proj(gelu(fc(x))), one op on the CPU
        B, T, C = x.shape
        if not isinstance(self.fc, nn.Linear):   # quantized (minigrad.nn.quantize): the two layers
            return self.drop(self.proj(F.gelu(self.fc(x))))
        y = F.gelu_mlp(x.reshape(B * T, C), self.fc.weight, self.fc.bias, self.proj.weight,
                       self.proj.bias)  # the fused op takes rows: (B*T, C)
        return self.drop(y.reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, cfg, rng):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg, rng)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg, rng)

    def forward(self, x, mask):
        """x (B, S, C), mask (B, 1, 1, S) bool True = a real token -> (B, S, C)."""
        h = self.ln_1(x)
        k, v = self.attn.kv(h)
        x = x + self.attn(h, k, v, mask)
        return x + self.mlp(self.ln_2(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, rng):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.self_attn = Attention(cfg, rng)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.cross_attn = Attention(cfg, rng)
        self.ln_3 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg, rng)

    def forward(self, x, memory, mask, cache: DecoderCache | None = None, layer: int = 0):
        """x (B, T, C), memory (B, S, C) the encoder output, mask (B, 1, 1, S) -> (B, T, C)."""
        h = self.ln_1(x)
        k, v = self.self_attn.kv(h)                           # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.extend(layer, k, v)                  # (B, nh, Tk, hs)
        # causal, bottom-right aligned: with a cache the new queries see every cached key
        x = x + self.self_attn(h, k, v, is_causal=True)
        if cache is not None and cache.cross_kv[layer] is not None:
            ck, cv = (minigrad.Tensor(a) for a in cache.cross_kv[layer])
        else:
            ck, cv = self.cross_attn.kv(memory)               # (B, nh, S, hs)
            if cache is not None:
                cache.cross_kv[layer] = (ck.data, cv.data)
        x = x + self.cross_attn(self.ln_2(x), ck, cv, mask)   # Tq = T, Tk = S
        return x + self.mlp(self.ln_3(x))


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.dropout_rng = np.random.default_rng([seed, 0xD50])       # every Dropout; checkpointed
        C = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, C)             # (V, C), tied to the head
        self.src_pos = nn.Embedding(config.max_len, C)
        self.tgt_pos = nn.Embedding(config.max_len, C)
        self.drop = nn.Dropout(config.dropout, generator=self.dropout_rng)
        self.encoder = nn.ModuleList([EncoderLayer(config, self.dropout_rng) for _ in range(config.n_layer)])
        self.ln_enc = nn.LayerNorm(C)
        self.decoder = nn.ModuleList([DecoderLayer(config, self.dropout_rng) for _ in range(config.n_layer)])
        self.ln_dec = nn.LayerNorm(C)
        self.init_weights(seed)

    def init_weights(self, seed: int) -> None:
        """N(0, 0.02) weights, zero biases, residual output projections / sqrt(2 * layers per stack)."""
        rng = np.random.default_rng(seed)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if ".ln_" in name or name.startswith("ln_"):
                continue
            if name.endswith("bias"):
                std = 0.0
            elif name.endswith(("out_proj.weight", "mlp.proj.weight")):
                std = proj_std
            else:
                std = 0.02
            p.data[...] = p._xp.asarray(rng.standard_normal(p.shape, dtype=np.float32) * np.float32(std))

    def num_params(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def _ids(self, ids, what: str):
        xp = self.tok_emb.weight._xp
        a = xp.asarray(ids.data if isinstance(ids, minigrad.Tensor) else ids)
        if a.ndim != 2 or a.dtype.kind not in "iu":
            raise ValueError(f"Seq2Seq: {what} must be a (batch, tokens) integer array, got {a.dtype} {tuple(a.shape)}")
        return a

    def encode(self, src):
        """src (B, S) ids, PAD = padding -> (memory (B, S, C), mask (B, 1, 1, S) bool True = real token)."""
        src = self._ids(src, "src")
        S = src.shape[1]
        if S > self.config.max_len:
            raise ValueError(f"Seq2Seq: source of {S} tokens exceeds max_len {self.config.max_len}")
        xp = self.tok_emb.weight._xp
        mask = (src != PAD)[:, None, None, :]
        x = self.drop(self.tok_emb(src) + self.src_pos(xp.arange(S)))   # (B, S, C)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.ln_enc(x), mask

    def decode(self, dec_in, memory, mask, cache: DecoderCache | None = None):
        """dec_in (B, T) ids continuing the cache (if any) -> logits (B*T, V)."""
        dec_in = self._ids(dec_in, "decoder input")
        B, T = dec_in.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_len:
            raise ValueError(f"Seq2Seq: decoder input of {start + T} tokens exceeds max_len {self.config.max_len}")
        xp = self.tok_emb.weight._xp
        x = self.drop(self.tok_emb(dec_in) + self.tgt_pos(xp.arange(start, start + T)))   # (B, T, C)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.ln_dec(x.reshape(B * T, -1)) @ self.tok_emb.weight.T   # (B*T, V)

    def forward(self, src, dec_in, targets=None):
        """-> (logits (B, T, V), mean cross-entropy over targets != IGNORE, or None)."""
        memory, mask = self.encode(src)
        dec_in = self._ids(dec_in, "decoder input")
        B, T = dec_in.shape
        if mask.shape[0] != B:
            raise ValueError(f"Seq2Seq: src has batch {mask.shape[0]} but the decoder input has batch {B}")
        logits = self.decode(dec_in, memory, mask)
        V = self.config.vocab_size
        if targets is None:
            return logits.reshape(B, T, V), None
        tgt = self.tok_emb.weight._xp.asarray(targets).reshape(B * T)
        return logits.reshape(B, T, V), F.cross_entropy(logits, tgt, ignore_index=IGNORE)


# --------------------------------------------------------------------------- decoding

def _log_probs(logits) -> np.ndarray:
    """(N, V) logits Tensor -> (N, V) float64 host log-probabilities (one definition for greedy and beam)."""
    z = np.asarray(logits.numpy(), dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def greedy_decode(model: Seq2Seq, src, max_new: int, use_cache: bool = True) -> np.ndarray:
    """src (B, S) -> (B, <= max_new) token ids: the argmax token at each step (ties towards the
    lower id); after its <eos> a row continues with PAD. Stops when every row has ended."""
    from minigrad import no_grad

    src = np.asarray(src)
    B, V = src.shape[0], model.config.vocab_size
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            memory, mask = model.encode(src)
            tokens = np.full((B, 1), BOS, np.int64)
            done = np.zeros(B, bool)
            cache = DecoderCache(model.config.n_layer) if use_cache else None
            for _ in range(max_new):
                step_in = tokens[:, -1:] if use_cache else tokens
                logits = model.decode(step_in, memory, mask, cache)          # (B*T, V)
                nxt = np.argmax(_log_probs(logits.reshape(B, -1, V)[:, -1, :]), axis=1)
                nxt[done] = PAD
                tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
                done |= nxt == EOS
                if done.all():
                    break
    finally:
        model.train(was_training)
    return tokens[:, 1:]


def beam_search(model: Seq2Seq, src, beam: int, max_new: int, use_cache: bool = True):
    """Beam search of width `beam` scoring hypotheses by their summed log-probability.

    Returns (tokens (B, L) of the best hypothesis per source, scores (B,)). A hypothesis that
    emitted <eos> is extended only by PAD at no cost. With beam=1 this is greedy decoding: the
    argmax token at each step (ties broken towards the lower id).
    """
    from minigrad import no_grad

    if not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam width must be a positive integer, got {beam!r}")
    V = model.config.vocab_size
    if beam > V:
        raise ValueError(f"beam width {beam} exceeds the vocabulary size {V}")
    src = np.asarray(src)
    B, N = src.shape[0], beam
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            memory, mask = model.encode(src)                         # (B, S, C), (B, 1, 1, S)
            if N > 1:   # hypotheses of source b are rows b*N .. b*N+N-1
                xp = memory._xp
                memory = minigrad.Tensor(xp.repeat(memory.data, N, axis=0))
                mask = xp.repeat(mask, N, axis=0)
            tokens = np.full((B * N, 1), BOS, np.int64)
            scores = np.zeros((B, N))
            scores[:, 1:] = -np.inf                                  # one live hypothesis to start
            done = np.zeros(B * N, bool)
            cache = DecoderCache(model.config.n_layer) if use_cache else None
            for _ in range(max_new):
                step_in = tokens[:, -1:] if use_cache else tokens
                logits = model.decode(step_in, memory, mask, cache)      # (B*N*T, V)
                T = step_in.shape[1]
                logp = _log_probs(logits.reshape(B * N, T, V)[:, -1, :])  # (B*N, V)
                logp[done] = -np.inf
                logp[done, PAD] = 0.0
                cand = (scores[:, :, None] + logp.reshape(B, N, V)).reshape(B, N * V)
                top = np.argsort(-cand, axis=1, kind="stable")[:, :N]    # (B, N)
                scores = np.take_along_axis(cand, top, axis=1)
                rows = (np.arange(B)[:, None] * N + top // V).reshape(-1)  # (B*N,) parent hypotheses
                new = (top % V).reshape(-1, 1)
                tokens = np.concatenate([tokens[rows], new], axis=1)
                done = done[rows] | (new[:, 0] == EOS)
                if cache is not None and N > 1:
                    cache.reorder(rows)
                if done.all():
                    break
    finally:
        model.train(was_training)
    best = np.argmax(scores, axis=1)                                   # (B,)
    pick = np.arange(B) * N + best
    return tokens[pick, 1:], scores[np.arange(B), best]
