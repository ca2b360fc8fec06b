"""FLOP and byte estimates per op call, from shapes: a table keyed by the op's class name.

The key is the name the engine records for an op, ``type(fn).__name__`` (minigrad/autograd.py),
so the profiler's rows and this table agree without importing the ops. An op missing from the
table has no estimate (views, indexing): the profiler shows "-".

How the estimates count:
  - matmul: 2·M·N·K per product; the backward one such product per input that needs a gradient;
  - attention forward: 2·Tq·Tk·(d + dv) plus the softmax, and the (Tq, Tk) probabilities the
    NumPy attention materialises (not the fused kernel);
  - elementwise ops: a nominal count per output element (a transcendental counts as one); the
    backward one more per input that needs a gradient (the chain-rule multiply);
  - bytes: each input read once and each output written once.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["ESTIMATES", "estimate"]


class Call(NamedTuple):
    """One recorded op call, as an estimator sees it."""
    fwd: bool            # the forward (else the backward)
    shapes: tuple        # the inputs' shapes
    sizes: list          # the inputs' element counts
    out_shape: tuple | None   # the forward output's shape (None if unknown)
    itemsize: int
    needs: tuple         # per input: does the backward compute its gradient
    kernel: bool         # the op ran the fused kernel (no (Tq, Tk) buffer; the backward recomputes)


def _size(shape) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _batch(*lead_shapes) -> int:
    try:
        return _size(np.broadcast_shapes(*lead_shapes))
    except ValueError:
        return _size(lead_shapes[0])


# ---------------------------------------------------------------- products
def _matmul(c: Call):
    a, b = c.shapes
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    m, k, n = a2[-2], a2[-1], b2[-1]
    one = 2 * _batch(a2[:-2], b2[:-2]) * m * n * k
    out = _size(c.out_shape) if c.out_shape is not None else _batch(a2[:-2], b2[:-2]) * m * n
    if c.fwd:
        return one, (c.sizes[0] + c.sizes[1] + out) * c.itemsize
    # da = g bᵀ reads g and b, writes da; db = aᵀ g reads a and g, writes db
    needs = c.needs
    flops = one * (int(needs[0]) + int(needs[1]))
    by = (needs[0] * (out + 2 * c.sizes[0] + c.sizes[1]) + needs[1] * (out + 2 * c.sizes[1] + c.sizes[0])) * c.itemsize
    return flops, by


def _linear(c: Call):                           # y = x Wᵀ (+ b): x (…, in), W (out, in)
    x, w = c.shapes[0], c.shapes[1]
    ins, bias = c.sizes, len(c.shapes) == 3
    rows, n_out = ins[0] // max(x[-1], 1), w[0]
    one = 2 * rows * x[-1] * n_out
    out = rows * n_out
    if c.fwd:
        return one + (out if bias else 0), (ins[0] + ins[1] + out + (n_out if bias else 0)) * c.itemsize
    # dx = g W and dW = gᵀ x (each one GEMM), db = Σ g
    needs = c.needs
    flops = one * (int(needs[0]) + int(needs[1])) + (out if bias and needs[2] else 0)
    by = (needs[0] * (out + ins[1] + ins[0]) + needs[1] * (out + ins[0] + ins[1])) * c.itemsize
    return flops, by


# ---------------------------------------------------------------- attention and the fused blocks
def _attention(c: Call):
    q, k, v = c.shapes[:3]
    tq, d, tk, dv = q[-2], q[-1], k[-2], v[-1]
    bh = _batch(q[:-2], k[:-2])
    scores = bh * tq * tk
    io = (c.sizes[0] + c.sizes[1] + c.sizes[2] + bh * tq * dv) * c.itemsize
    if c.fwd:
        return 2 * scores * (d + dv) + 5 * scores, io + (0 if c.kernel else 2 * scores * c.itemsize)
    flops = 2 * scores * (d + dv) * 2 + 4 * scores
    if c.kernel:
        flops += 2 * scores * d + 5 * scores
    return flops, 2 * io + (0 if c.kernel else 4 * scores * c.itemsize)


def _gelu_mlp(c: Call):                         # x (N, C), W1 (H, C), W2 (C2, H): two GEMMs and a GELU
    (n, ch), (h, _), (c2, _) = c.shapes[0], c.shapes[1], c.shapes[2]
    ins = c.sizes
    gemms = 2 * n * h * (ch + c2)
    if c.fwd:                                   # writes a and the slope (N, H) and y
        return gemms + 20 * n * h, (ins[0] + ins[1] + ins[2] + 2 * n * h + n * c2) * c.itemsize
    # dA = g W2, dW2 = gᵀ a, dH = dA·slope, dx = dH W1, dW1 = dHᵀ x
    return 2 * gemms + n * h, (2 * ins[0] + 2 * ins[1] + 2 * ins[2] + 3 * n * h + 2 * n * c2) * c.itemsize


def _qkv_attention(c: Call):                    # qkv (B, T, 3C) -> (B, T, C), fused: no (T, T) buffer kept
    b, t, ch = c.shapes[0][0], c.shapes[0][1], c.shapes[0][2] // 3
    gemm = 2 * b * t * t * ch                   # one (T, T)·(T, hs) product summed over the heads
    if c.fwd:                                   # S = Q Kᵀ, O = P V (the softmax's few FLOPs per score left out)
        return 2 * gemm, (c.sizes[0] + b * t * ch) * c.itemsize
    # S recomputed, dP = dO Vᵀ, dQ, dK, dV; reads qkv, y, dy, writes dqkv
    return 5 * gemm, (2 * c.sizes[0] + 2 * b * t * ch) * c.itemsize


def _layer_norm(c: Call):
    x = c.sizes[0]
    ch = c.shapes[0][-1] if c.shapes[0] else 1
    n_affine = len(c.shapes) - 1
    if c.fwd:
        return 7 * x, ((2 if c.kernel else 3) * x + n_affine * ch) * c.itemsize
    return 10 * x, (3 * x + 2 * n_affine * ch) * c.itemsize


# ---------------------------------------------------------------- families: a count per element or row
def _elementwise(per: int):
    """Nominal FLOPs per output element, forward; the backward costs one more per input that
    needs a gradient on top of the derivative itself."""
    def est(c: Call):
        out = _size(c.out_shape) if c.out_shape is not None else (_batch(*c.shapes) if c.shapes else 0)
        if c.fwd:
            return per * out, (sum(c.sizes) + out) * c.itemsize
        k = sum(c.needs)
        return (per + 1) * out * k, (out + sum(c.sizes) + sum(s for s, nd in zip(c.sizes, c.needs) if nd)) * c.itemsize
    return est


def _rowwise(per: int):
    """Softmax-like ops: ``per`` FLOPs per input element forward, 4 backward."""
    def est(c: Call):
        x = c.sizes[0]
        if c.fwd:
            return per * x, (x + _out_or_zero(c)) * c.itemsize
        return 4 * x, 3 * x * c.itemsize
    return est


def _out_or_zero(c: Call) -> int:
    return _size(c.out_shape) if c.out_shape is not None else 0


def _reduce(c: Call):                           # one FLOP per input element, both ways
    x = c.sizes[0]
    return x, (x + _out_or_zero(c)) * c.itemsize


def _copy(flops_per_out: int):
    """Data movement: each output element read and written once (IndexAdd also adds it)."""
    def est(c: Call):
        if c.out_shape is None:
            return None, None
        out = _size(c.out_shape)
        return flops_per_out * out, 2 * out * c.itemsize
    return est


# the table: op class name -> estimator(Call) -> (flops, bytes), or (None, None) for no estimate
ESTIMATES = {
    "MatMul": _matmul, "Linear": _linear, "Attention": _attention, "GeluMLP": _gelu_mlp,
    "QKVAttention": _qkv_attention, "LayerNorm": _layer_norm,
    **{name: _elementwise(per) for name, per in {
        "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Neg": 1, "PowScalar": 1, "Pow": 1, "Exp": 1, "Log": 1,
        "Sqrt": 1, "Tanh": 1, "Sigmoid": 3, "Relu": 1, "Abs": 1, "Clip": 2, "Maximum": 1, "Minimum": 1,
        "Where": 1, "Compare": 1, "AsType": 0, "Erf": 1, "Gelu": 8}.items()},
    **{name: _rowwise(per) for name, per in {"Softmax": 5, "LogSoftmax": 5, "LogSumExp": 4, "CrossEntropy": 5}.items()},
    **{name: _reduce for name in ("Sum", "Mean", "Max", "SumTo")},
    **{name: _copy(0) for name in ("GetItem", "Concatenate", "ToDevice")},
    "IndexAdd": _copy(1),
}


def _accumulate_grad(in_shapes, itemsize):
    """The backward engine's gradient sums, g_total += g: read both, write one."""
    if not in_shapes:
        return None, None
    n = _size(in_shapes[0])
    return n, 3 * n * itemsize


def estimate(name: str, phase: str, in_shapes, out_shape, itemsize: int, needs=None, kernel=False):
    """(flops, bytes) for one call of op ``name`` in ``phase`` ("forward" or "backward"), or
    (None, None) when there is no estimate. ``in_shapes``: the inputs' shapes; ``out_shape``: the
    forward output's shape (None if unknown); ``needs``: per input, whether backward computes
    its gradient (default: all); ``kernel``: the op ran the fused kernel (no (Tq, Tk) buffer in
    memory; the backward recomputes the scores)."""
    if name == "AccumulateGrad":
        return _accumulate_grad(in_shapes, itemsize)
    est = ESTIMATES.get(name)
    if est is None:
        return None, None
    needs = tuple(needs) if needs is not None else (True,) * len(in_shapes)
    call = Call(phase == "forward", tuple(in_shapes), [_size(s) for s in in_shapes], out_shape, itemsize,
                needs, bool(kernel))
    return est(call)
