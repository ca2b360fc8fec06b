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

Weights are used as stored, (out, in), each row read once: a float32 W by mg_f32_matmul on the pool
of kernels/cpu/quant_gemm.cpp that also runs the attention (BLAS's GEMV without AVX-512), a
quantized Linear (minigrad.nn.quantize) by its own native kernel. LayerNorm, GELU and the softmax
are the native loops the Tensor ops use (kernels/cpu), so the step equals the Tensor forward up to
the summation order of the dot products. Without the native library, on a GPU, or for any other
weight, the matching piece falls back to the module's forward.

The prefill (many tokens: GEMMs) runs the Tensor forward with the same cache.
"""
from __future__ import annotations

import functools
import math

import numpy as np

import minigrad
from minigrad import dispatch
from minigrad.models.gpt import GPT, KVCache


def _linear_call(linear, x, out):
    """A zero-argument call doing out = linear(x) for the fixed buffers x (B, in), out (B, out): the
    GEMV on the stored weight (float32 or quantized), else the module's own forward."""
    w = getattr(getattr(linear, "weight", None), "data", None)
    b = linear.bias.data if getattr(linear, "bias", None) is not None else None
    if type(w) is np.ndarray and w.dtype == np.float32 and w.flags.c_contiguous:
        return _gemv_call(w, b, x, out)
    native = _quantized_call(linear, x, out)
    if native is not None:
        return native

    def module():
        out[...] = linear(minigrad.Tensor(x)).data
    return module


def _gemv_call(w, b, x, out):
    """out = x wᵀ (+ b) for a C-contiguous float32 w (N, K), bound to x and out. On the native pool
    that runs the attention and the quantized GEMVs where it has AVX-512, not BLAS: BLAS's threads
    spin on after each call and took the second core from the pool's attention (gpt2/512 float32
    decode: its attention took 2.9 ms a token after BLAS GEMVs, against 1.4 ms in the int8 step)."""
    lib = dispatch.cpu_native(w)
    if lib is not None and lib.quant_isa & 1:
        from minigrad.nn.quantize import _threads, native_isa
        isa = native_isa(lib, "float32")                # MINIGRAD_QUANT_ISA=portable: the plain loop
        return lib.f32_matmul(x, w, b, isa, _threads(), out=out, bind=True)
    wt = w.T   # (in, out) view: BLAS reads W's rows, no copy

    def gemv():
        np.matmul(x, wt, out=out)
        if b is not None:
            np.add(out, b, out=out)
    return gemv


def _quantized_call(linear, x, out):
    """For a QuantizedLinear (minigrad.nn.quantize) with float32 activations, the native kernel its
    forward runs (QuantizedMatmulNative), bound to x and out: the Tensor op's dispatch, and even the
    wrapper's argument conversions, cost about as much as the GEMV at the default size. None where
    its forward would not take the native path."""
    from minigrad.nn.quantize import QuantizedLinear, _threads, int8_isa, native_isa

    if not isinstance(linear, QuantizedLinear) or linear.activations != "float32":
        return None
    w = linear.weight.data
    lib = dispatch.cpu_native(np.zeros(1, np.float32))
    if lib is None or type(w) is not np.ndarray:
        return None
    bias = None if linear.bias is None else linear.bias.data
    if w.dtype == np.int8:
        group, scale = linear._group(), linear.weight_scale.data
        isa = int8_isa(lib, group)
        if isa == 2:
            return lib.q8x24_matmul(x, w, scale, linear._wsum(group), bias, group, 2, _threads(), out=out, bind=True)
        return lib.q8_matmul(x, w, scale, bias, group, isa, _threads(), out=out, bind=True)
    return lib.bf16_matmul(x, w.view(np.uint16), bias, native_isa(lib, "bfloat16"), _threads(), out=out, bind=True)


class Decoder:
    """Decode steps for `model` with batch size B: prefill(idx) then step(tokens) per token.

    Owns one KVCache and the step's buffers, all allocated here; a step allocates no array of the
    model's size (the cache buffers and scratch keep their identity: tests check it). The logits
    returned by step() live in a buffer that the next step overwrites. Every native call of a step
    is bound here, once, to its arrays' addresses (a plan of zero-argument calls, each holding the
    arrays it names), so the step itself converts no arguments. It uses the weights the model had
    when the Decoder was built: make a new one after loading others.
    """

    def __init__(self, model: GPT, batch_size: int = 1):
        cfg = model.config
        self.model, self.config = model, cfg
        xp = model.wte.weight._xp
        self.cache = KVCache(cfg, batch_size, xp=xp)
        B, C, nh = batch_size, cfg.n_embd, cfg.n_head
        self.B, self.nh, self.hs = B, nh, C // nh
        self.scale = 1.0 / math.sqrt(self.hs)
        # the arrays the step reads directly (the Linears check their own weights in _linear_call)
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
        from minigrad.nn.quantize import _threads, native_isa
        threads = _threads()                                  # the attention's share-out (as the GEMVs')
        attn_isa = native_isa(self.lib, "float32")            # MINIGRAD_QUANT_ISA=portable: the plain loop
        q, self.k_new, self.v_new = (self.qkv[:, i * C:(i + 1) * C].reshape(B, nh, self.hs) for i in range(3))
        att2 = self.att.reshape(B, C)                         # (B, nh, 1, hs) is (B, C) in memory
        gelu = self.lib._fn["gelu", np.dtype(f32)]
        h = self.h.ctypes.data
        self.blocks = []
        for i, blk in enumerate(model.h):
            K, V = self.cache.buf[i, 0], self.cache.buf[i, 1]                   # (B, nh, block, hs)
            self.blocks.append((
                self._ln(blk.ln_1),                                               # a = ln_1(x)
                _linear_call(blk.attn.c_attn, self.a, self.qkv),                  # qkv = a W_attnᵀ
                K, V, self.lib.decode_attention(q, K, V, 1, self.scale, threads, self.att, bind=True, isa=attn_isa),
                _linear_call(blk.attn.c_proj, att2, self.tmp),                    # tmp = att W_projᵀ
                self._ln(blk.ln_2),
                _linear_call(blk.mlp.c_fc, self.a, self.h),
                functools.partial(gelu, h, h, self.slope.ctypes.data, self.h.size),  # in place
                _linear_call(blk.mlp.c_proj, self.h, self.tmp)))
        self.ln_f = self._ln(model.ln_f)
        # the head: wte tied (a GEMV over its rows), or the quantized copy nn.quantize_ puts in lm_head
        lm_head = getattr(model, "lm_head", None)
        self.head = (_gemv_call(model.wte.weight.data, None, self.a, self.logits) if lm_head is None
                     else _linear_call(lm_head, self.a, self.logits))

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
        m, x, tmp = self.model, self.x, self.tmp
        wte, V = m.wte.weight.data, self.config.vocab_size
        for b, t in enumerate(np.asarray(tokens).reshape(self.B).tolist()):
            if not 0 <= t < V:
                raise IndexError(f"token id {t} is outside the vocabulary of {V}")
            x[b] = wte[t]                                       # a row view: no fancy-index copy
        x += m.wpe.weight.data[pos]
        for ln_1, qkv, K, V, attend, proj, ln_2, fc, gelu, mlp_proj in self.blocks:
            ln_1()                                              # a = ln_1(x)
            qkv()                                               # qkv = a W_attnᵀ
            K[:, :, pos] = self.k_new                           # the new key and value into the cache
            V[:, :, pos] = self.v_new
            attend(pos + 1)                                     # att = softmax(q Kᵀ / sqrt(hs)) V
            proj()
            x += tmp
            ln_2()
            fc()
            gelu()
            mlp_proj()
            x += tmp
        self.cache.length = pos + 1
        self.ln_f()
        self.head()
        return self.logits

    # ---- pieces
    def _ln(self, ln):
        """self.a = LayerNorm(self.x) with `ln`'s weight and bias: the native loop the Tensor op's
        variant runs, bound to the step's buffers."""
        w = ln.weight.data.ctypes.data if ln.weight is not None else None
        b = ln.bias.data.ctypes.data if ln.bias is not None else None
        x, st = self.x, self.stats
        call = functools.partial(self.lib._fn["ln_fwd", np.dtype(np.float32)], x.ctypes.data, w, b, self.a.ctypes.data,
                                 st[0].ctypes.data, st[1].ctypes.data, x.shape[0], x.shape[1], float(ln.eps))
        call.arrays = (ln.weight.data if ln.weight is not None else None, ln.bias.data if ln.bias is not None else None)
        return call
