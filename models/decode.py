"""One-token GPT decode steps on arrays: the KV cache and every temporary allocated once.

A decode step reads every weight once (one GEMV per Linear, the tied head last), so its floor is
the weights' bytes over memory bandwidth; at the default size it is per-op Python overhead. The
Tensor forward (models/gpt.py) costs about 80 op dispatches per token and a fresh array per op.
`Decoder.step` runs the same math on preallocated buffers:

    x = wte[tok] + wpe[pos]                                   (B, C)
    per block:  a = ln_1(x);  qkv = a W_attnᵀ                 (B, 3C) -> q, k, v (B, nh, hs)
                K[:, :, pos], V[:, :, pos] = k, v             cache buffers (B, nh, block, hs)
                p = softmax(q K[:, :, :pos+1]ᵀ / sqrt(hs))    (B, nh, 1, Tk), Tk = pos + 1  (one native
                x += (p V) W_projᵀ                            (B, C)          call, heads over 2 threads)
                x += gelu(ln_2(x) W_fcᵀ) W_mlp_projᵀ          (B, 4C) -> (B, C)
    logits = ln_f(x) wteᵀ                                     (B, V)

Weights are used as stored: `x @ W.T` on a C-contiguous (out, in) W is a BLAS GEMV over W's rows,
no copy. LayerNorm, GELU and the softmax are the native loops the Tensor ops use (kernels/cpu), so
the step equals the Tensor forward up to the summation order of the attention products. Without
the native library, on a GPU, or for weights that are not plain arrays of the activations' dtype
(a quantized Linear), the matching piece falls back to the module's own forward.

The prefill (many tokens: GEMMs) runs the Tensor forward with the same cache.
"""
from __future__ import annotations

import math

import numpy as np

import minigrad
from minigrad import dispatch
from minigrad.models.gpt import GPT, KVCache


def _linear_into(linear):
    """f(x, out): out = linear(x) for x (B, in), out (B, out); a GEMV on the stored weight when it
    is a plain float array, else the module's own forward (e.g. a quantized Linear)."""
    w = getattr(getattr(linear, "weight", None), "data", None)
    b = linear.bias.data if getattr(linear, "bias", None) is not None else None
    if type(w) is np.ndarray and w.dtype == np.float32 and w.flags.c_contiguous:
        wt = w.T   # (in, out) view: BLAS reads W's rows, no copy

        def gemv(x, out):
            np.matmul(x, wt, out=out)
            if b is not None:
                out += b
        return gemv

    native = _quantized_into(linear)
    if native is not None:
        return native

    def module(x, out):
        out[...] = linear(minigrad.Tensor(x)).data
    return module


def _quantized_into(linear):
    """For a QuantizedLinear (minigrad.nn.quantize) with float32 activations, the native kernel its
    forward runs (QuantizedMatmulNative), called directly: the Tensor op's dispatch costs about as
    much as the GEMV at the default size. None where its forward would not take the native path."""
    from minigrad.nn.quantize import QuantizedLinear, _threads, native_isa

    if not isinstance(linear, QuantizedLinear) or linear.activations != "float32":
        return None
    w = linear.weight.data
    lib = dispatch.cpu_native(np.zeros(1, np.float32))
    if lib is None or type(w) is not np.ndarray:
        return None
    bias = None if linear.bias is None else linear.bias.data
    nt = _threads()
    if w.dtype == np.int8:
        scale, group, isa = linear.weight_scale.data, linear._group(), native_isa(lib, "int8")

        def q8(x, out):
            lib.q8_matmul(x, w, scale, bias, group, isa, nt, out=out)
        return q8
    bits, isa = w.view(np.uint16), native_isa(lib, "bfloat16")

    def bf16(x, out):
        lib.bf16_matmul(x, bits, bias, isa, nt, out=out)
    return bf16


class Decoder:
    """Decode steps for `model` with batch size B: prefill(idx) then step(tokens) per token.

    Owns one KVCache and the step's buffers, all allocated here; a step allocates no array of the
    model's size (the cache buffers and scratch keep their identity: tests check it). The logits
    returned by step() live in a buffer that the next step overwrites.
    """

    def __init__(self, model: GPT, batch_size: int = 1):
        cfg = model.config
        self.model, self.config = model, cfg
        xp = model.wte.weight._xp
        self.cache = KVCache(cfg, batch_size, xp=xp)
        B, C, nh = batch_size, cfg.n_embd, cfg.n_head
        self.B, self.nh, self.hs = B, nh, C // nh
        self.scale = 1.0 / math.sqrt(self.hs)
        # the arrays the step reads directly (the Linears check their own weights in _linear_into)
        lns = [ln for blk in model.h for ln in (blk.ln_1, blk.ln_2)] + [model.ln_f]
        arrays = [model.wte.weight.data, model.wpe.weight.data] + [
            p.data for ln in lns for p in (ln.weight, ln.bias) if p is not None]
        self.lib = dispatch.cpu_native(*arrays) if xp is np and arrays[0].dtype == np.float32 else None
        self.fast = self.lib is not None
        if not self.fast:
            return
        f32 = np.float32
        self.x = np.empty((B, C), f32)                        # the residual stream
        self.a = np.empty((B, C), f32)                        # LayerNorm output
        self.tmp = np.empty((B, C), f32)                      # a projection's output
        self.qkv = np.empty((B, 3 * C), f32)
        self.att = np.empty((B, nh, 1, self.hs), f32)         # p V, read back as (B, C)
        self.h = np.empty((B, 4 * C), f32)                    # the MLP's hidden layer
        self.slope = np.empty((B, 4 * C), f32)                # GELU's slope (the native loop writes it)
        self.stats = np.empty((2, B, 1), f32)                 # LayerNorm mean, rstd
        self.logits = np.empty((B, cfg.vocab_size), f32)
        from minigrad.nn.quantize import _threads
        self.threads = _threads()                             # the attention's share-out (as the GEMVs')
        self.blocks = [(self._ln(blk.ln_1), _linear_into(blk.attn.c_attn), _linear_into(blk.attn.c_proj),
                        self._ln(blk.ln_2), _linear_into(blk.mlp.c_fc), _linear_into(blk.mlp.c_proj))
                       for blk in model.h]
        self.ln_f = self._ln(model.ln_f)
        # the head: wte tied (a GEMV over its rows), or the quantized copy nn.quantize_ puts in lm_head
        lm_head = getattr(model, "lm_head", None)
        self.head = self._tied_head if lm_head is None else _linear_into(lm_head)
        self._gelu = self.lib._fn["gelu", np.dtype(f32)]
        self._ln_fwd = self.lib._fn["ln_fwd", np.dtype(f32)]

    # ---- state
    @property
    def length(self) -> int:
        return self.cache.length

    def reset(self) -> None:
        """Forget the cached tokens (the buffers stay)."""
        self.cache.length = 0

    def buffers(self) -> list:
        """Every array a step writes: the identity of each must not change across steps."""
        names = ("x", "a", "tmp", "qkv", "att", "h", "slope", "stats", "logits")
        return [self.cache.buf] + ([getattr(self, n) for n in names] if self.fast else [])

    # ---- the two phases
    def prefill(self, idx):
        """idx (B, T) continues the cached tokens; returns the last position's logits (B, V)."""
        logits, _ = self.model(np.asarray(idx), cache=self.cache, last_only=True)
        return logits.data[:, -1]

    def step(self, tokens):
        """tokens (B,) ids at position cache.length; returns the logits (B, V) of the next token."""
        pos = self.cache.length
        if pos + 1 > self.config.block_size:
            raise ValueError(f"sequence of {pos + 1} tokens exceeds block_size {self.config.block_size}")
        if not self.fast:
            idx = np.asarray(tokens).reshape(self.B, 1)
            logits, _ = self.model(idx, cache=self.cache, last_only=True)
            return logits.data[:, -1]
        m, x, a = self.model, self.x, self.a
        wte, V = m.wte.weight.data, self.config.vocab_size
        for b, t in enumerate(np.asarray(tokens).reshape(self.B).tolist()):
            if not 0 <= t < V:
                raise IndexError(f"token id {t} is outside the vocabulary of {V}")
            x[b] = wte[t]                                       # a row view: no fancy-index copy
        x += m.wpe.weight.data[pos]
        for i, (ln_1, qkv_into, proj_into, ln_2, fc_into, mlp_proj_into) in enumerate(self.blocks):
            self._layernorm(ln_1)                               # a = ln_1(x)
            qkv_into(a, self.qkv)
            self._attend(i, pos)
            proj_into(self.att.reshape(self.B, -1), self.tmp)   # (B, nh, 1, hs) is (B, C) in memory
            x += self.tmp
            self._layernorm(ln_2)
            fc_into(a, self.h)
            self._gelu(self.h.ctypes.data, self.h.ctypes.data, self.slope.ctypes.data, self.h.size)  # in place
            mlp_proj_into(self.h, self.tmp)
            x += self.tmp
        self.cache.length = pos + 1
        self._layernorm(self.ln_f)
        self.head(a, self.logits)
        return self.logits

    # ---- pieces
    def _ln(self, ln) -> tuple:
        """(weight pointer, bias pointer, eps) of a LayerNorm for the native loop (None: absent)."""
        w = ln.weight.data.ctypes.data if ln.weight is not None else None
        b = ln.bias.data.ctypes.data if ln.bias is not None else None
        return w, b, float(ln.eps)

    def _layernorm(self, ln) -> None:
        """self.a = LayerNorm(self.x), the native loop the Tensor op's variant runs."""
        w, b, eps = ln
        x, st = self.x, self.stats
        self._ln_fwd(x.ctypes.data, w, b, self.a.ctypes.data, st[0].ctypes.data, st[1].ctypes.data,
                     x.shape[0], x.shape[1], eps)

    def _attend(self, layer: int, pos: int) -> None:
        """The new token's q against the cached keys; writes k, v at pos and p V into self.att.
        One native call (quant_gemm.cpp's decode attention, heads shared out over the GEMV pool): at a
        512 context the cached keys and values are 3 MB a layer, cold after the weights went by."""
        B, nh, hs, C = self.B, self.nh, self.hs, self.config.n_embd
        qkv = self.qkv
        K, V = self.cache.buf[layer, 0], self.cache.buf[layer, 1]        # (B, nh, block, hs)
        K[:, :, pos] = qkv[:, C:2 * C].reshape(B, nh, hs)
        V[:, :, pos] = qkv[:, 2 * C:].reshape(B, nh, hs)
        self.lib.decode_attention(qkv[:, :C].reshape(B, nh, hs), K, V, pos + 1, self.scale, self.threads, self.att)

    def _tied_head(self, a, out) -> None:
        np.matmul(a, self.model.wte.weight.data.T, out=out)              # (B, C) @ (C, V): GEMV over wte's rows
