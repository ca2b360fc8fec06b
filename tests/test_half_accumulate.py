"""Half-type scans and variance accumulate in float32 and round once (issue 15), as Sum and Mean do.

NumPy scans bfloat16 (and float16) in the type itself, rounding every partial sum: a bfloat16
cumsum of ones stops at 256, and the error of a long scan grows with its length. Here every
result is compared with a float64 reference computed on the same half values, element by element,
against a bound stated from the unit roundoffs (u = eps/2: 2^-8 bfloat16, 2^-11 float16,
2^-24 float32):
    float32 accumulation of i terms (recursive):  i · 2^-24 · Σ|terms|   (γ_i, first order)
    the one rounding to the half type at the end:  u · |result|
Each test also shows that NumPy's own half-type scan breaks the same bound, so it can fail.
"""
import numpy as np
import pytest

import minigrad as mg

BF16, F16 = mg.bfloat16, np.float16
U = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}
U32 = 2.0 ** -24
HALF = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]


def _u(dtype):
    return U[np.dtype(dtype).name]


def _f64(a):
    return np.asarray(a).astype(np.float64)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("reverse", [False, True])
def test_long_cumsum_does_not_drift(dtype, reverse):
    n = 4096
    x = mg.Tensor(np.random.default_rng(0).uniform(0.5, 1.5, (2, n)).astype(np.float32)).astype(dtype)
    x.requires_grad = True
    y = x.cumsum(1) if not reverse else x.flip(1).cumsum(1).flip(1)
    assert y.dtype == dtype
    xs = _f64(x.numpy())
    ref = np.cumsum(xs, 1) if not reverse else np.cumsum(xs[:, ::-1], 1)[:, ::-1]
    i = np.arange(1, n + 1, dtype=np.float64)[None, :]
    terms = i if not reverse else i[:, ::-1]                  # how many terms each result adds
    bound = _u(dtype) * np.abs(ref) + (1 + _u(dtype)) * terms * U32 * ref   # all terms positive: Σ|x| = ref
    err = np.abs(_f64(y.numpy()) - ref)
    assert np.all(err <= bound), float((err / bound).max())
    naive = np.cumsum(x.numpy(), 1, dtype=dtype) if not reverse else np.cumsum(x.numpy()[:, ::-1], 1, dtype=dtype)[:, ::-1]
    assert not np.all(np.abs(_f64(naive) - ref) <= bound)   # NumPy's own scan drifts past it
    # the gradient of Σ cumsum is a reverse cumsum of ones: n - i (or i + 1), rounded once
    y.astype(np.float32).sum().backward()            # (the sum itself would overflow float16)
    want = (n - np.arange(n) if not reverse else np.arange(n) + 1).astype(np.float64)
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(_f64(x.grad.numpy()[0]), _f64(want.astype(np.float32).astype(dtype)))


def test_cumsum_of_ones_in_bfloat16_passes_256():
    y = mg.Tensor(np.ones(1000, np.float32)).astype(BF16).cumsum(0).numpy()
    assert _f64(y[-1]) == 1000.0 and _f64(np.cumsum(np.ones(1000, BF16))[-1]) == 256.0


@pytest.mark.parametrize("dtype", HALF)
def test_cumprod_accumulates_in_float32(dtype):
    n = 1024
    x = mg.Tensor((1 + np.random.default_rng(1).uniform(-1, 1, n) * 2.0 ** -5).astype(np.float32)).astype(dtype)
    ref = np.cumprod(_f64(x.numpy()))
    i = np.arange(1, n + 1, dtype=np.float64)
    bound = _u(dtype) * ref + (1 + _u(dtype)) * i * U32 * ref   # a float32 product of i factors: γ_i relative
    err = np.abs(_f64(x.cumprod(0).numpy()) - ref)
    assert np.all(err <= bound), float((err / bound).max())
    assert not np.all(np.abs(_f64(np.cumprod(x.numpy(), dtype=dtype)) - ref) <= bound)


@pytest.mark.parametrize("dtype", HALF)
def test_logcumsumexp_accumulates_in_float32(dtype):
    """The float32 scan is log-depth (Hillis-Steele): each result passes through ceil(log2 n)
    logaddexps, each within a few float32 ulps of |y|; we allow 4 ulps per level."""
    n = 2048
    x = mg.Tensor(np.random.default_rng(2).standard_normal(n).astype(np.float32)).astype(dtype)
    xs = _f64(x.numpy())
    ref = np.logaddexp.accumulate(xs)
    levels = int(np.ceil(np.log2(n)))
    bound = _u(dtype) * np.abs(ref) + 4 * levels * U32 * np.maximum(np.abs(ref), np.abs(xs).max())
    err = np.abs(_f64(x.logcumsumexp(0).numpy()) - ref)
    assert np.all(err <= bound), float((err / bound).max())


def _naive_var(x, dtype):
    """Tensor.var's composition as it ran in the half type: mean, deviations, squares, each rounded."""
    m = x.astype(np.float32).mean().astype(dtype)
    d = (x - m).astype(dtype)
    return ((d * d).astype(dtype).astype(np.float32).sum() / x.size).astype(dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_var_and_std_round_once(dtype):
    """Two-pass variance in float32 over n values: the mean is off by δ <= n 2^-24 |mean|, which adds
    δ² to the variance; deviations, squares and the sum add (n + 2) 2^-24 var; then one rounding."""
    n = 4096
    rng = np.random.default_rng(3)
    x = mg.Tensor((rng.standard_normal(n) * 4 + 1002).astype(np.float32)).astype(dtype)
    x.requires_grad = True
    xs = _f64(x.numpy())
    ref = xs.var()
    delta = n * U32 * np.abs(xs).mean()
    bound = _u(dtype) * ref + (1 + _u(dtype)) * ((n + 2) * U32 * ref + delta ** 2)
    v = x.var()
    assert v.dtype == dtype and abs(_f64(v.numpy()) - ref) <= bound
    assert abs(_f64(x.std().numpy()) - np.sqrt(ref)) <= _u(dtype) * np.sqrt(ref) + bound / (2 * np.sqrt(ref)) * (1 + _u(dtype))
    if dtype is BF16:   # the mean rounded to bfloat16 (spacing 4 near 1002) first: off by about δ² = 4
        assert abs(_f64(_naive_var(x.numpy(), dtype)) - ref) > bound
    v.backward()                                                     # d var / dx = 2 (x - mean) / n
    g = _f64(x.grad.numpy())
    want = 2 * (xs - xs.mean()) / n
    assert x.grad.dtype == dtype
    assert np.all(np.abs(g - want) <= _u(dtype) * np.abs(want) + 4 * U32 * np.abs(xs).max() * 2 / n + delta * 2 / n)
