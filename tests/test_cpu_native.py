"""The native CPU loops (kernels/cpu/) and the NumPy paths they replace, each against an
independent reference: closed forms and straightforward float64 formulas written in this file
(explicit softmax Jacobians where the library uses row-sum identities).

Each native function runs on odd sizes and masks, and the ops run with the native path on and
off (the ``mode`` fixture), both judged by the same reference; gradcheck runs in float64 with the
native path on and off; Adam matches a float64 transcription of its update, and the native and
NumPy updates agree bit for bit (same operation order); a missing compiler gives one warning and
the NumPy path.

Tolerances: |got - want| <= ULPS eps S, eps of the dtype computed in and S the scale of the terms
that make each result (max |want|, or for a result that cancels, the terms' own scale). The float64
reference contributes at most a few float64 ulps; the result a few roundings per element plus the
summation error of reductions over at most 4097 terms, which the pairwise (NumPy) and lane-blocked
(native) sums keep near log2(4097) = 12 units u = 6 eps in the worst case. ULPS = 16.
Measured: at most 2.8 eps S.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
import minigrad.optim as optim
from minigrad import dispatch
from minigrad.ops.attention import attention_reference, causal_mask
from minigrad.ops.special import gelu_and_slope
from minigrad.gradient_check import float64_tolerances
from minigrad.kernels.cpu import native

DTYPES = (np.float32, np.float64)


@pytest.fixture
def lib(monkeypatch, fast_paths):
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib = dispatch.cpu_native()
    if lib is None:
        pytest.skip("the native CPU library could not be built here (no usable C++ compiler)")
    return lib


@pytest.fixture(params=["native", "numpy"])
def mode(request, monkeypatch, lib):
    """Run a test with the native path on, then with MINIGRAD_CPU_NATIVE=0."""
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1" if request.param == "native" else "0")
    return request.param


ULPS = 16


def near(actual, expected, dtype, scale, ulps=ULPS, err_msg=""):
    """|actual - expected| <= ulps eps(dtype) scale, elementwise (scale a number or an array)."""
    err = np.abs(np.asarray(actual, np.float64) - expected)
    bound = ulps * float(np.finfo(dtype).eps) * np.asarray(scale, np.float64)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{err_msg}: {int(bad.sum())} of {err.size} elements off by more than {ulps} eps x scale; "
                           f"worst {float((err / np.maximum(bound, 1e-300)).max()) * ulps:.3g} eps x scale")


def close(actual, expected, dtype, ulps=64, err_msg=""):
    """|actual - expected| <= ulps·eps·max(1, |expected|max) + ulps·eps·|expected|, eps of ``dtype``."""
    e = float(np.finfo(dtype).eps) * ulps
    expected = np.asarray(expected)
    scale = max(1.0, float(np.nanmax(np.abs(expected)))) if expected.size and np.isfinite(expected).any() else 1.0
    np.testing.assert_allclose(actual, expected, rtol=e, atol=e * scale, err_msg=err_msg)


def numpy_path(monkeypatch, fn):
    """fn() computed with the native path off."""
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    try:
        return fn()
    finally:
        monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")


# ---------------------------------------------------------------- eligibility
def test_eligible_only_contiguous_float_ndarrays():
    a = np.zeros((4, 6), np.float32)
    assert native.eligible(a, None, a)
    assert not native.eligible(a[:, ::2])                       # not C-contiguous
    assert not native.eligible(a.astype(np.int32))
    assert not native.eligible(a, a.astype(np.float64))        # mixed dtypes
    assert not native.eligible(np.zeros(3, np.float16))
    class Sub(np.ndarray):
        pass
    assert not native.eligible(np.zeros(3, np.float32).view(Sub))   # a subclass is not numpy.ndarray
    assert not native.eligible(None)


def test_env_switch_turns_native_off(monkeypatch, lib):
    x = np.zeros(3, np.float32)
    assert dispatch.cpu_native(x) is lib
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    assert dispatch.cpu_native(x) is None
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")
    assert dispatch.cpu_native(np.zeros((3, 3), np.float32).T[:2]) is None


# ---------------------------------------------------------------- GELU
def gelu_exact(x):
    """x Φ(x) and Φ(x) + x φ(x) in float64 with math.erf (correctly rounded to about 1 ulp)."""
    x = np.asarray(x, np.float64)
    cdf = 0.5 * (1 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2)))
    return x * cdf, cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 33, 1000003])
@pytest.mark.parametrize("path", ["native", "numpy"])
def test_gelu_matches_the_exact_formula(lib, dtype, n, path):
    # float32 evaluates erf by A&S 7.1.26 (|error| <= 1.5e-7 = 1.26 eps), so Φ is within 0.63 eps
    # and y = x Φ within 0.63 eps |x|, plus a few roundings: y is judged at the scale max(|x|, 1), the
    # slope at 1 (|Φ + x φ| <= 1.13). Measured: 1.6 eps |x| and 2.8 eps (float32), 1 eps (float64).
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[:3] = np.array([0.0, -30.0, 12.0])[: min(3, n)]
    y, slope = lib.gelu(x) if path == "native" else gelu_and_slope(x)
    assert y.dtype == slope.dtype == dtype
    y_exact, slope_exact = gelu_exact(x)
    near(y, y_exact, dtype, np.maximum(np.abs(x), 1), ulps=8, err_msg=f"gelu {path}")
    near(slope, slope_exact, dtype, 1.0, ulps=8, err_msg=f"gelu slope {path}")


def test_gelu_float64_is_the_exact_formula(lib):
    x = np.linspace(-9, 9, 1001)
    y, slope = lib.gelu(x)
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(y, x * cdf, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(slope, cdf + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi), rtol=1e-14, atol=1e-15)


def test_gelu_non_finite_values(lib):
    # gelu(inf) = inf·1; gelu(-inf) = -inf·0 and the slopes at ±inf are inf·0 forms: NaN, as IEEE
    # arithmetic gives for the formula (and as the NumPy path gives); gelu(0) = 0 with slope 1/2
    x = np.array([np.inf, -np.inf, np.nan, 0.0], np.float32)
    y, slope = lib.gelu(x)
    np.testing.assert_array_equal(y, np.array([np.inf, np.nan, np.nan, 0.0], np.float32))
    np.testing.assert_array_equal(slope, np.array([np.nan, np.nan, np.nan, 0.5], np.float32))
    with np.errstate(invalid="ignore"):
        y0, s0 = gelu_and_slope(x)
    np.testing.assert_array_equal(y0, y)
    np.testing.assert_array_equal(s0, slope)


def test_gelu_op_uses_native_and_falls_back_for_views(monkeypatch, lib):
    calls = []
    orig = native.NativeCPU.gelu
    monkeypatch.setattr(native.NativeCPU, "gelu", lambda self, x: calls.append(x.shape) or orig(self, x))
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    F.gelu(mg.Tensor(x))
    assert calls == [(6, 8)]
    y = F.gelu(mg.Tensor(x)[:, ::2])          # a strided view: the NumPy path
    assert calls == [(6, 8)]
    near(y.numpy(), gelu_exact(x[:, ::2])[0], np.float32, np.maximum(np.abs(x[:, ::2]), 1), ulps=8)


# ---------------------------------------------------------------- LayerNorm
def layer_norm_reference(x, w, b, g, eps=1e-5):
    """y, dx, dw, db in float64 from the textbook formulas, with the scale of each result's terms.
    xhat = (x - mean) rstd is computed from a rounded mean, an error of u |mean| rstd that a row of
    nearly equal values amplifies: k = max(|x|) rstd per row (>= |xhat|) is xhat's scale. dx =
    rstd (gw - mean(gw) - xhat mean(gw xhat)) cancels (to 0 when C = 2), so it is judged by its
    terms, rstd |gw| k max(1, |xhat|), not by its own size."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    c = x.shape[-1]
    w = np.ones(c) if w is None else w.astype(np.float64)
    b = np.zeros(c) if b is None else b.astype(np.float64)
    xc = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xh = xc * rstd
    gw = g * w
    dx = rstd * (gw - gw.mean(-1, keepdims=True) - xh * (gw * xh).mean(-1, keepdims=True))
    want = [xh * w + b, dx, (g * xh).sum(0), g.sum(0)]
    k = np.abs(x).max(-1, keepdims=True) * rstd                                   # (N, 1)
    scales = [(k * np.abs(w)).max() + np.abs(b).max(),
              (rstd * np.abs(gw).max(-1, keepdims=True) * k * np.maximum(1, np.abs(xh).max(-1, keepdims=True))).max(),
              (np.abs(g) * k).sum(0).max(), np.abs(g).sum(0).max()]
    return want, scales


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 2, 7, 33, 128, 4097])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_the_formula(mode, dtype, c, affine):
    rng = np.random.default_rng(c)
    n = 3 if c > 1000 else 17
    x = (rng.standard_normal((n, c)) * 3 + 1).astype(dtype)
    w = rng.standard_normal(c).astype(dtype) if affine else None
    b = rng.standard_normal(c).astype(dtype) if affine else None
    g = rng.standard_normal((n, c)).astype(dtype)
    ts = [mg.Tensor(a, requires_grad=True) for a in (x, w, b) if a is not None]
    y = F.layer_norm(ts[0], (c,), *ts[1:], eps=1e-5)
    y.backward(mg.Tensor(g))
    got = [y.numpy()] + [t.grad.numpy() for t in ts]
    want, scales = layer_norm_reference(x, w, b, g)
    for name, a, e, s in zip(["y", "dx", "dw", "db"], got, want, scales):
        near(a, e, dtype, s, err_msg=f"layer_norm {name}, c={c}, {mode}")


def test_layer_norm_backward_without_weight_grad(lib):
    x = mg.Tensor(np.random.default_rng(0).standard_normal((5, 9)), requires_grad=True)
    w = mg.Tensor(np.ones(9))           # a frozen weight: no dw is computed or returned
    b = mg.Tensor(np.zeros(9), requires_grad=True)
    F.layer_norm(x, (9,), w, b).sum().backward()
    assert w.grad is None
    np.testing.assert_allclose(b.grad.numpy(), np.full(9, 5.0))
    np.testing.assert_allclose(x.grad.numpy(), 0.0, atol=1e-14)   # d/dx of Σ xhat is 0


# ---------------------------------------------------------------- attention rows
def masked_softmax_ref(s, scale, allowed):
    """softmax(s·scale) over allowed keys in float64; rows with no allowed key -> 0."""
    t = np.where(allowed, s.astype(np.float64) * scale, -np.inf)
    m = t.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.where(allowed, np.exp(t - m), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    return e / np.where(den == 0, 1, den)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tq,tk", [(1, 1), (7, 7), (3, 33), (9, 4), (2, 4097)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("keys", [False, True])
def test_softmax_masks(lib, dtype, tq, tk, causal, keys):
    rng = np.random.default_rng(tq * 1000 + tk)
    B, H = 2, 3
    s = (rng.standard_normal((B, H, tq, tk)) * 5).astype(dtype)
    allowed = np.ones((B, H, tq, tk), bool)
    km = None
    if causal:
        allowed &= causal_mask(np, tq, tk)
    if keys:
        km = rng.random((B, tk)) < 0.6
        km[1] = False                                  # batch 1: every row empty
        allowed &= km[:, None, None, :]
    p = lib.softmax_(s.copy(), 0.37, causal=causal, key_mask=km)
    want = masked_softmax_ref(s, np.float64(dtype(0.37)), allowed)
    close(p, want, dtype, ulps=16)
    assert np.all(p[~allowed] == 0)                   # masked keys and empty rows are exact zeros
    rows = allowed.any(axis=-1)
    np.testing.assert_allclose(p.sum(axis=-1)[rows], 1.0, rtol=16 * np.finfo(dtype).eps * tk ** 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_of_attention_scores_matches_the_formula(lib, dtype):
    rng = np.random.default_rng(5)
    q, k = (rng.standard_normal((2, 4, 11, 16)).astype(dtype) for _ in range(2))
    s = q @ k.swapaxes(-1, -2)
    p = lib.softmax_(s.copy(), 0.25, causal=True)
    want = masked_softmax_ref(s, 0.25, np.tril(np.ones((11, 11), bool)))     # probabilities: scale 1
    near(p, want, dtype, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tk", [1, 7, 33, 4097])
def test_attention_ds_matches_numpy(lib, dtype, tk):
    rng = np.random.default_rng(tk)
    p = masked_softmax_ref(rng.standard_normal((5, tk)), 1.0, np.ones((5, tk), bool)).astype(dtype)
    dp = rng.standard_normal((5, tk)).astype(dtype)
    want = p * (dp - (dp * p).sum(axis=-1, keepdims=True)) * dtype(0.125)
    got = lib.attention_ds_(dp.copy(), p, 0.125)
    close(got, want, dtype, ulps=16)


def attention_formula(q, k, v, g, allowed, scale):
    """o, dq, dk, dv in float64, element by element from the definitions: p = masked softmax of the
    scaled scores (a row with no allowed key is 0), ds = dpᵀ (diag(p) - p pᵀ) from the explicit
    Jacobian. Returns the values and the scale of each (sums of |terms|, so cancellation is fair)."""
    q, k, v, g = (a.astype(np.float64) for a in (q, k, v, g))
    p = masked_softmax_ref(q @ k.swapaxes(-1, -2), scale, allowed)            # (…, Tq, Tk)
    dp = g @ v.swapaxes(-1, -2)
    jac = np.einsum("...i,ij->...ij", p, np.eye(p.shape[-1])) - p[..., :, None] * p[..., None, :]
    ds = np.einsum("...ij,...i->...j", jac, dp) * scale
    abs_ds = np.abs(p) * (np.abs(dp) + (np.abs(dp) * p).sum(-1, keepdims=True)) * scale
    want = [p @ v, ds @ k, ds.swapaxes(-1, -2) @ q, p.swapaxes(-1, -2) @ g]
    scales = [(p @ np.abs(v)).max(), (abs_ds @ np.abs(k)).max(), (abs_ds.swapaxes(-1, -2) @ np.abs(q)).max(),
              (p.swapaxes(-1, -2) @ np.abs(g)).max()]
    return want, scales


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal,key_mask", [(True, False), (False, True), (True, True), (False, False)])
def test_sdpa_matches_the_formula(mode, dtype, causal, key_mask):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 6, 8)).astype(dtype)
    k, v = (rng.standard_normal((2, 3, 9, 8)).astype(dtype) for _ in range(2))
    g = rng.standard_normal((2, 3, 6, 8)).astype(dtype)
    am = None
    allowed = np.ones((2, 3, 6, 9), bool)
    if key_mask:
        am = rng.random((2, 1, 1, 9)) < 0.5
        am[0] = False                                   # batch 0: no key at all, zero output and gradients
        allowed &= am
    if causal:
        allowed &= np.arange(9)[None, :] <= np.arange(6)[:, None] + 3          # bottom-right aligned
    ts = [mg.Tensor(a, requires_grad=True) for a in (q, k, v)]
    y = F.scaled_dot_product_attention(*ts, attn_mask=am, is_causal=causal)
    y.backward(mg.Tensor(g))
    want, scales = attention_formula(q, k, v, g, allowed, 1 / math.sqrt(8))
    for name, a, e, sc in zip(["o", "dq", "dk", "dv"], [y.numpy()] + [t.grad.numpy() for t in ts], want, scales):
        near(a, e, dtype, sc, err_msg=f"sdpa {name}, {mode}")


# ---------------------------------------------------------------- gradcheck, native on and off
# at float64's own tolerance (minigrad.gradient_check.float64_tolerances), not PyTorch's defaults
def tight_gradcheck(fn, inputs):
    return mg.gradcheck(fn, inputs, **float64_tolerances(fn, inputs))


def test_gradcheck_gelu(mode):
    x = mg.Tensor(np.random.default_rng(0).standard_normal((3, 5)) * 2, requires_grad=True)
    assert tight_gradcheck(lambda t: F.gelu(t), [x])


def test_gradcheck_layer_norm(mode):
    rng = np.random.default_rng(1)
    x, w, b = (mg.Tensor(a, requires_grad=True) for a in
               (rng.standard_normal((4, 6)), rng.standard_normal(6), rng.standard_normal(6)))
    assert tight_gradcheck(lambda x, w, b: F.layer_norm(x, (6,), w, b), [x, w, b])


@pytest.mark.parametrize("masking", ["causal", "keys"])
def test_gradcheck_sdpa(mode, masking):
    rng = np.random.default_rng(2)
    q, k, v = (mg.Tensor(rng.standard_normal((2, 2, 4, 3)), requires_grad=True) for _ in range(3))
    am = None
    if masking == "keys":
        am = np.array([True, False, True, True])[None, None, None, :].repeat(2, axis=0)
    assert tight_gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=am,
                                                                           is_causal=masking == "causal"), [q, k, v])


# ---------------------------------------------------------------- optimizers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_cls,wd", [(optim.AdamW, 0.1), (optim.Adam, 0.05), (optim.Adam, 0.0)])
def test_adam_matches_the_update_rule(mode, dtype, opt_cls, wd):
    """Four steps against torch.optim's documented Adam/AdamW update, transcribed in float64."""
    rng = np.random.default_rng(7)
    lr, b1, b2, eps = 3e-3, 0.9, 0.99, 1e-8
    w0 = rng.standard_normal((33, 7)).astype(dtype)
    p = mg.Tensor(w0.copy(), requires_grad=True)
    opt = opt_cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    w, m, v = w0.astype(np.float64), 0.0, 0.0
    for t in range(1, 5):
        grad = rng.standard_normal(w.shape).astype(dtype)
        p.grad = mg.Tensor(grad)
        opt.step()
        gd = grad.astype(np.float64)
        if opt_cls is optim.AdamW:
            w = w * (1 - lr * wd)
        else:
            gd = gd + wd * w
        m = b1 * m + (1 - b1) * gd
        v = b2 * v + (1 - b2) * gd * gd
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    # each step moves w by at most about lr; its rounding is relative to |w| (<= 5 here)
    near(p.numpy(), w, dtype, np.abs(w).max(), err_msg=f"{opt_cls.__name__} {mode}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt_cls,wd", [(optim.AdamW, 0.1), (optim.Adam, 0.05), (optim.Adam, 0.0)])
def test_adam_matches_numpy_bitwise(monkeypatch, lib, dtype, opt_cls, wd):
    def run():
        rng = np.random.default_rng(7)
        ps = [mg.Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True) for s in ((33, 7), (1,), (1001,))]
        opt = opt_cls(ps, lr=3e-3, betas=(0.9, 0.99), weight_decay=wd)
        for _ in range(4):
            for p in ps:
                p.grad = mg.Tensor(rng.standard_normal(p.shape).astype(dtype))
            opt.step()
        st = [opt.state[id(p)] for p in ps]
        return [p.numpy() for p in ps] + [s["exp_avg"] for s in st] + [s["exp_avg_sq"] for s in st]

    # same operation order and roundings, no fused multiply-adds: the results are identical
    for a, e in zip(run(), numpy_path(monkeypatch, run)):
        np.testing.assert_array_equal(a, e)


# ---------------------------------------------------------------- fallback
@pytest.fixture
def fresh_native(monkeypatch, tmp_path, fast_paths):
    """A loader that has not loaded yet, with an empty cache; restored afterwards."""
    monkeypatch.setenv("MINIGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")
    native.reset()
    yield native
    monkeypatch.undo()
    native.reset()


def test_missing_compiler_warns_once_and_numpy_runs(monkeypatch, fresh_native):
    monkeypatch.setenv("CXX", str(fresh_native.cache_dir() / "no-such-compiler"))
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="no-such-compiler"):
        assert dispatch.cpu_native(x) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # the second call stays quiet
        assert dispatch.cpu_native(x) is None
        y = F.gelu(mg.Tensor(x)).numpy()
    np.testing.assert_array_equal(y, gelu_and_slope(x)[0])


def test_build_error_warns_and_falls_back(monkeypatch, tmp_path, fresh_native):
    bad = tmp_path / "fast_cpu.cpp"
    bad.write_text("this is not C++;\n")
    monkeypatch.setattr(fresh_native, "SOURCE", bad)
    with pytest.warns(RuntimeWarning, match="failed on fast_cpu.cpp"):
        assert fresh_native.load() is None


def test_softmax_nan_rows_stay_nan(lib):
    s = np.zeros((1, 1, 3, 4), np.float32)
    s[0, 0, 0, 1] = np.nan            # one NaN score poisons its row, as in the NumPy reference
    s[0, 0, 1, :] = np.nan
    p = lib.softmax_(s, 1.0)
    assert np.isnan(p[0, 0, :2]).all()
    np.testing.assert_array_equal(p[0, 0, 2], np.full(4, 0.25, np.float32))


def test_sdpa_on_strided_head_views_uses_native(monkeypatch, lib):
    """q, k, v as the GPT makes them: strided views of one (3, B, nh, T, hs) transpose."""
    calls = []
    orig_sm, orig_ds = native.NativeCPU.softmax_, native.NativeCPU.attention_ds_
    monkeypatch.setattr(native.NativeCPU, "softmax_", lambda self, *a, **k: calls.append("softmax") or orig_sm(self, *a, **k))
    monkeypatch.setattr(native.NativeCPU, "attention_ds_", lambda self, *a: calls.append("ds") or orig_ds(self, *a))
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((2, 5, 3, 2, 4)).astype(np.float32)          # (B, T, 3, nh, hs)

    def run():
        t = mg.Tensor(qkv, requires_grad=True)
        h = t.transpose(2, 0, 3, 1, 4)                                     # (3, B, nh, T, hs)
        y = F.scaled_dot_product_attention(h[0], h[1], h[2], is_causal=True)
        (y * y).sum().backward()
        return y.numpy(), t.grad.numpy()

    y, dqkv = run()
    assert calls == ["softmax", "ds"]
    h = qkv.transpose(2, 0, 3, 1, 4)
    g = 2 * y                                                              # d sum(y²)/dy
    want, scales = attention_formula(h[0], h[1], h[2], g, np.tril(np.ones((5, 5), bool)), 0.5)
    near(y, want[0], np.float32, scales[0], err_msg="o")
    for i, name in enumerate(["dq", "dk", "dv"]):
        near(dqkv[:, :, i].transpose(0, 2, 1, 3), want[i + 1], np.float32, scales[i + 1], err_msg=name)


# ---------------------------------------------------------------- cross-entropy, embedding rows
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_the_formula(mode, dtype, reduction):
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((9, 5)) * 3).astype(dtype)
    target = rng.integers(0, 5, 9)
    target[[2, 6]] = -100                                  # ignored rows
    g = rng.standard_normal(9).astype(dtype) if reduction == "none" else np.asarray(1.7, dtype)
    x = mg.Tensor(logits, requires_grad=True)
    y = F.cross_entropy(x, target, reduction=reduction)
    y.backward(mg.Tensor(g))
    # float64: nll_i = log Σ_j exp(z_ij) - z_i,t ; d nll_i / dz_ij = softmax(z_i)_j - [j = t]
    z = logits.astype(np.float64)
    valid = target != -100
    t = np.where(valid, target, 0)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(9), t]
    d = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    d[np.arange(9), t] -= 1
    w = valid * {"mean": g / valid.sum(), "sum": g, "none": g}[reduction]
    want_y = {"mean": (nll * valid).sum() / valid.sum(), "sum": (nll * valid).sum(), "none": nll * valid}[reduction]
    near(y.numpy(), want_y, dtype, np.abs(z).max() + np.log(5), err_msg=f"cross_entropy loss, {mode}")
    near(x.grad.numpy(), d * w[:, None], dtype, np.abs(w).max(), err_msg=f"cross_entropy gradient, {mode}")
    assert not x.grad.numpy()[[2, 6]].any()


def test_cross_entropy_non_finite_rows_use_the_numpy_path(lib):
    logits = np.array([[0.0, 1.0], [-np.inf, -np.inf]], np.float32)
    assert lib.cross_entropy(logits, np.array([0, 1]), -100) is None
    with np.errstate(invalid="ignore"):                   # -inf - -inf in the all -inf row
        y = F.cross_entropy(mg.Tensor(logits), np.array([0, 1]), reduction="none").numpy()
    assert np.isfinite(y[0]) and not np.isfinite(y[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_add_rows_is_add_at_bitwise(lib, dtype):
    rng = np.random.default_rng(8)
    idx = rng.integers(0, 6, 200)
    v = rng.standard_normal((200, 7)).astype(dtype)
    out, ref = np.ones((6, 7), dtype), np.ones((6, 7), dtype)
    lib.scatter_add_rows(out, idx, v)
    np.add.at(ref, idx, v)
    np.testing.assert_array_equal(out, ref)
