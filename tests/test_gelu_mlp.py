"""F.gelu_mlp: the one-op MLP (ops.fused.GeluMLP, hidden activation in place) against the
composition linear -> gelu -> linear it replaces: forward and gradients in float32 and float64,
with and without biases; gradcheck and gradgradcheck in float64 through the fused op."""
from __future__ import annotations


import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F

from conftest import tol


def make(dtype, n=7, c=5, h=11, c2=3, bias=(True, True), seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in ((n, c), (h, c), (c2, h))]
    b1 = rng.standard_normal(h).astype(dtype) if bias[0] else None
    b2 = rng.standard_normal(c2).astype(dtype) if bias[1] else None
    return arrays + [b1, b2], rng.standard_normal((n, c2)).astype(dtype)


def run(arrays, g, fused_op):
    x, w1, w2, b1, b2 = (None if a is None else mg.Tensor(a, requires_grad=True) for a in arrays)
    y = (F.gelu_mlp(x, w1, b1, w2, b2) if fused_op else
         F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2))
    y.backward(mg.Tensor(g))
    grads = [None if t is None else t.grad.numpy() for t in (x, w1, w2, b1, b2)]
    return y, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [(True, True), (False, False), (True, False), (False, True)])
def test_matches_the_composition(native_on, dtype, bias):
    arrays, g = make(dtype, bias=bias)
    y, grads = run(arrays, g, True)
    assert type(y._ctx).__name__ == "GeluMLPNative"        # the native variant ran
    y0, grads0 = run(arrays, g, False)
    rtol, atol = tol(dtype, ulps=64 * 11)     # sums of up to 11 terms per output, each a few roundings
    np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=rtol, atol=atol)
    for name, a, b in zip(["x", "w1", "w2", "b1", "b2"], grads, grads0):
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)


def test_input_is_not_modified(native_on):
    arrays, g = make(np.float32)
    before = [a.copy() for a in arrays]
    run(arrays, g, True)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bias", [(True, True), (False, False)])
def test_gradcheck_and_gradgradcheck(native_on, bias):
    arrays, _ = make(np.float64, n=3, c=4, h=5, c2=2, bias=bias, seed=1)
    ts = [mg.Tensor(a, requires_grad=True) for a in arrays if a is not None]

    def fn(x, w1, w2, *bs):
        b1 = bs[0] if bias[0] else None
        b2 = bs[-1] if bias[1] else None
        return F.gelu_mlp(x, w1, b1, w2, b2)
    assert type(fn(*ts)._ctx).__name__ == "GeluMLPNative"
    assert mg.gradcheck(fn, ts)
    assert mg.gradgradcheck(fn, ts)


def test_without_the_native_library_the_reference_runs(monkeypatch):
    arrays, g = make(np.float32)
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    y, grads = run(arrays, g, True)
    assert type(y._ctx).__name__ == "GeluMLP"                # the reference forward and backward
    y0, grads0 = run(arrays, g, False)
    rtol, atol = tol(np.float32, ulps=64 * 11)
    np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=rtol, atol=atol)
    for a, b in zip(grads, grads0):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    x = mg.Tensor(np.ones((2, 3, 5), np.float32))             # a 3-D input runs over its rows
    w1, w2 = mg.Tensor(np.ones((4, 5), np.float32)), mg.Tensor(np.ones((2, 4), np.float32))
    np.testing.assert_allclose(F.gelu_mlp(x, w1, None, w2, None).numpy(), np.full((2, 3, 2), 20.0), rtol=1e-6)


def test_hypothesis_shapes(native_on):
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=25)
    @hyp.given(n=st.integers(1, 20), c=st.integers(1, 20), h=st.integers(1, 40), c2=st.integers(1, 10),
               b1=st.booleans(), b2=st.booleans(), seed=st.integers(0, 2**31))
    def check(n, c, h, c2, b1, b2, seed):
        arrays, g = make(np.float32, n, c, h, c2, (b1, b2), seed)
        y, grads = run(arrays, g, True)
        y0, grads0 = run(arrays, g, False)
        rtol, atol = tol(np.float32, ulps=64 * max(c, h))
        np.testing.assert_allclose(y.numpy(), y0.numpy(), rtol=rtol, atol=atol * max(1.0, h))
        for a, b in zip(grads, grads0):
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * max(1.0, n * h))

    check()
