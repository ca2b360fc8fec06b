"""F.qkv_self_attention: the fused native CPU op (kernels/cpu/attention_cpu.cpp) against the
composition it replaces (split q|k|v, heads, scaled_dot_product_attention, heads back).

Forward and backward are compared with the NumPy reference in float32 and float64 on odd sizes
(T and head size not multiples of the vector width, T = 1, one head); gradcheck and gradgradcheck
run in float64 through the native op; hypothesis draws the shapes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
from minigrad.ops.attention import attention_reference, causal_mask

from conftest import tol


def reference(qkv, n_head, causal, scale=None):
    """(y (B, T, C), dqkv function) from the NumPy attention reference on the split heads."""
    b, t, c3 = qkv.shape
    c = c3 // 3
    hs = c // n_head
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    heads = qkv.reshape(b, t, 3, n_head, hs).transpose(2, 0, 3, 1, 4)
    q, k, v = heads[0], heads[1], heads[2]
    o, p = attention_reference(q, k, v, causal_mask(np, t, t) if causal else None, scale)

    def grad(dy):
        g = dy.reshape(b, t, n_head, hs).transpose(0, 2, 1, 3)
        dp = g @ v.swapaxes(-1, -2)
        ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
        d = np.stack([ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ g])
        return d.transpose(1, 3, 0, 2, 4).reshape(b, t, c3)

    return o.transpose(0, 2, 1, 3).reshape(b, t, c), grad


def run(qkv, n_head, causal, dy, scale=None):
    x = mg.Tensor(qkv, requires_grad=True)
    y = F.qkv_self_attention(x, n_head, is_causal=causal, scale=scale)
    y.backward(mg.Tensor(dy))
    return y, x.grad.numpy()


SHAPES = [(2, 64, 4, 32), (1, 1, 1, 8), (3, 17, 2, 3), (2, 33, 3, 20), (1, 5, 1, 17), (2, 130, 2, 16)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(native_on, dtype, causal, shape):
    b, t, nh, hs = shape
    rng = np.random.default_rng(sum(shape))
    qkv = rng.standard_normal((b, t, 3 * nh * hs)).astype(dtype)
    dy = rng.standard_normal((b, t, nh * hs)).astype(dtype)
    y, dqkv = run(qkv, nh, causal, dy)
    assert y._ctx is not None and type(y._ctx).__name__ == "QKVAttentionNative"   # the native variant ran
    assert y.dtype == dtype and dqkv.dtype == dtype
    y_ref, grad = reference(qkv.astype(np.float64), nh, causal)
    # a dot product of length T (or hs) per output: allow that many roundings of the float type
    rtol, atol = tol(dtype, ulps=64 * max(t, hs))
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dqkv, grad(dy.astype(np.float64)), rtol=rtol, atol=atol * max(1.0, np.abs(dy).max()))


def test_custom_scale_and_fallback_agree(native_on, monkeypatch):
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((2, 9, 3 * 12))
    dy = rng.standard_normal((2, 9, 12))
    y, d = run(qkv, 3, True, dy, scale=0.3)
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")                 # the reference forward and backward
    y0, d0 = run(qkv, 3, True, dy, scale=0.3)
    assert y0._ctx is not None and type(y0._ctx).__name__ == "QKVAttention"
    rtol, atol = tol(np.float64, ulps=64 * 9)
    np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(d, d0, rtol=rtol, atol=atol)


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck_and_gradgradcheck(native_on, causal):
    rng = np.random.default_rng(6)
    x = mg.Tensor(rng.standard_normal((2, 5, 3 * 6)), requires_grad=True)
    fn = lambda t: F.qkv_self_attention(t, 2, is_causal=causal)  # noqa: E731
    assert type(fn(x)._ctx).__name__ == "QKVAttentionNative"
    assert mg.gradcheck(fn, [x])
    assert mg.gradgradcheck(fn, [x])


def test_no_transposed_copies_in_the_graph(native_on):
    """The GPT's attention is one node between the c_attn and c_proj Linears (plus free reshapes)."""
    from minigrad.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    idx = np.arange(16).reshape(2, 8) % 11
    _, loss = model(idx, idx)
    names, seen, stack = [], set(), [loss._ctx]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        names.append(fn.op.__name__)      # the op, whichever variant ran
        stack.extend(t._ctx for t in fn.inputs)
    assert names.count("QKVAttention") == 1
    assert "Transpose" not in names           # no head transposes (the tied head is a Linear too)
    assert names.count("GetItem") == 2        # the token lookup and wpe[:T], no q/k/v slices


@pytest.mark.parametrize("bad, msg", [((2, 4, 10), "3E"), ((2, 4, 3, 3), "3E"), ((2, 4, 9), "divisible")])
def test_bad_shapes_name_the_problem(bad, msg):
    x = mg.Tensor(np.zeros(bad, np.float32))
    with pytest.raises(ValueError, match=msg):
        F.qkv_self_attention(x, 2)


def test_hypothesis_shapes(native_on):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=25)
    @hyp.given(b=st.integers(1, 3), t=st.integers(1, 40), nh=st.integers(1, 3), hs=st.integers(1, 20),
               causal=st.booleans(), seed=st.integers(0, 2**31))
    def check(b, t, nh, hs, causal, seed):
        rng = np.random.default_rng(seed)
        qkv = rng.standard_normal((b, t, 3 * nh * hs)).astype(np.float32)
        dy = rng.standard_normal((b, t, nh * hs)).astype(np.float32)
        y, d = run(qkv, nh, causal, dy)
        y_ref, grad = reference(qkv.astype(np.float64), nh, causal)
        rtol, atol = tol(np.float32, ulps=64 * max(t, hs))
        np.testing.assert_allclose(y.numpy(), y_ref, rtol=rtol, atol=atol)
        np.testing.assert_allclose(d, grad(dy.astype(np.float64)), rtol=rtol, atol=atol * max(1.0, np.abs(dy).max()))

    check()


def test_bench_ops_times_the_fused_ops_and_restores_the_switch(native_on, monkeypatch):
    """`minigrad bench ops` times each fused op with the native path on, then off, and leaves
    MINIGRAD_CPU_NATIVE as it found it (figures are printed, never asserted)."""
    from minigrad import bench
    monkeypatch.setattr(bench, "MLP_WARMUP", 1)
    monkeypatch.setattr(bench, "MLP_STEPS", 2)
    cases = bench._fused_cases()
    assert [name.split()[0] for name, _ in cases] == ["causal", "MLP"]
    for _, make in cases:
        assert bench.fused_op_ms(make, True) > 0 and bench.fused_op_ms(make, False) > 0
    import os
    assert os.environ["MINIGRAD_CPU_NATIVE"] == "1"
