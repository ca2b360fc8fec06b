"""The layernorm kernels (kernels/layernorm.cu) against the NumPy reference, on the CPU emulator and,
when CuPy sees a GPU, on the device.

Errors are max |kernel - reference| / max |reference| per output, with the reference evaluated in
float64 on the same inputs. Tolerances come from the dtype: 1e-5 for float32 (a few hundred ulps of
accumulated rounding over rows of up to 4097 values), 1e-12 for float64.
"""

import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CPU emulator needs a C++ compiler")

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def _gpu():
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except (ImportError, OSError, RuntimeError):  # no cupy, no driver, no device
        return None


DEVICES = ["emulator", pytest.param("gpu", marks=pytest.mark.skipif(_gpu() is None,
                                                                    reason="no GPU: cupy cannot see a device"))]


def _xp(device):
    return np if device == "emulator" else _gpu()


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _rel(out, ref):
    out, ref = _host(out).astype(np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape
    assert np.all(np.isfinite(out))
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    err = np.max(np.abs(out - ref)) if ref.size else 0.0
    return err / scale if scale > 0 else err


def _case(rng, N, C, dtype, affine):
    x = (rng.standard_normal((N, C)) * 3.0 + 1.0).astype(dtype)
    dy = rng.standard_normal((N, C)).astype(dtype)
    w = (1.0 + 0.5 * rng.standard_normal(C)).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    return x, dy, w, b


def _f64(a):
    return None if a is None else np.asarray(a, np.float64)


def _check_case(xp, N, C, dtype, affine, seed=0):
    from minigrad.kernels import layernorm

    dtype = np.dtype(dtype)
    x, dy, w, b = _case(np.random.default_rng(seed), N, C, dtype, affine)
    dev = [None if a is None else xp.asarray(a) for a in (x, dy, w, b)]
    y, mean, rstd = layernorm.layernorm_forward(dev[0], dev[2], dev[3], 1e-5)
    yr, mr, rr = layernorm.layernorm_forward_ref(_f64(x), _f64(w), _f64(b), 1e-5)
    tol = TOL[dtype]
    for name, out, ref in (("y", y, yr), ("mean", mean, mr), ("rstd", rstd, rr)):
        assert out.dtype == dtype
        assert _rel(out, ref) <= tol, f"{name} {N}x{C} {dtype}: rel error {_rel(out, ref):.2e} > {tol}"
    dx, dw, db = layernorm.layernorm_backward(dev[1], dev[0], dev[2], mean, rstd)
    dxr, dwr, dbr = layernorm.layernorm_backward_ref(_f64(dy), _f64(x), _f64(w), _host(mean).astype(np.float64),
                                                 _host(rstd).astype(np.float64))
    # dx is a difference of terms of size rstd·|dy·w| that cancel (to ~1e-5 of them at C = 2): judge its
    # error against those terms, not against max|dx|
    terms = float(np.max(_host(rstd).astype(np.float64))) * float(np.max(np.abs(_f64(dy) * (1.0 if w is None else _f64(w)))))
    dx_err = float(np.max(np.abs(_host(dx).astype(np.float64) - dxr))) / max(terms, np.finfo(np.float64).tiny)
    assert dx_err <= tol, f"dx {N}x{C} {dtype}: error {dx_err:.2e} of rstd·max|dy·w|"
    assert _rel(db, dbr) <= tol, f"dbias {N}x{C} {dtype}: rel error {_rel(db, dbr):.2e}"
    if affine:
        assert _rel(dw, dwr) <= tol, f"dweight {N}x{C} {dtype}: rel error {_rel(dw, dwr):.2e}"
    else:
        assert dw is None


# widths around every boundary of the launch configuration: warp (<= 1024), block (> 1024),
# vector width 4/2, multiples of 32, row cache fits / does not fit
WIDTHS = st.one_of(st.integers(1, 4097), st.sampled_from([1, 2, 3, 4, 31, 32, 33, 63, 64, 65, 127, 768, 1023, 1024,
                                                          1025, 2047, 2048, 3071, 4096, 4097]))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(N=st.integers(1, 9), C=WIDTHS, dtype=st.sampled_from([np.float32, np.float64]), affine=st.booleans(),
       seed=st.integers(0, 2**16))
def test_forward_backward_match_reference(device, N, C, dtype, affine, seed):
    _check_case(_xp(device), N, C, dtype, affine, seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N,C", [(64, 768), (300, 70), (5, 6000), (1, 8200), (2100, 9), (520, 1030)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fixed_shapes_including_uncached_rows(device, N, C, dtype):
    # 6000 float64 (96 KiB for the backward cache) and 8200 wide rows do not fit the row cache:
    # the kernels fall back to re-reading global memory, and the backward to the two-pass kernels.
    # 2100x9 and 520x1030 have more row groups than the fused backward has blocks (512), so its
    # blocks loop over several rows (warp-per-row and block-per-row modes).
    _check_case(_xp(device), N, C, dtype, True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_not_16_byte_aligned_take_the_scalar_path(dtype):
    from minigrad.kernels import layernorm

    N, C = 3, 64  # C is a multiple of the vector width, but the rows start 4 bytes off alignment
    item = np.dtype(dtype).itemsize
    buf = np.zeros(N * C * item + 4, np.uint8)
    x = buf[4:].view(dtype).reshape(N, C)
    x[...] = np.random.default_rng(2).standard_normal((N, C))
    assert x.ctypes.data % 16 != 0 and x.flags.c_contiguous
    out = layernorm.layernorm_forward(x, None, None, 1e-5)
    ref = layernorm.layernorm_forward_ref(x.astype(np.float64), None, None, 1e-5)
    for o, r in zip(out, ref):
        assert _rel(o, r) <= TOL[np.dtype(dtype)]


@pytest.mark.parametrize("device", DEVICES)
def test_dweight_dbias_are_bit_identical_on_repeat(device):
    from minigrad.kernels import layernorm

    xp = _xp(device)
    x, dy, w, b = (xp.asarray(a) for a in _case(np.random.default_rng(3), 700, 96, np.float32, True))
    _, mean, rstd = layernorm.layernorm_forward(x, w, b, 1e-5)
    first = layernorm.layernorm_backward(dy, x, w, mean, rstd)
    for _ in range(2):
        again = layernorm.layernorm_backward(dy, x, w, mean, rstd)
        for a, b2 in zip(first, again):
            assert _host(a).tobytes() == _host(b2).tobytes()


def test_backward_options():
    from minigrad.kernels import layernorm

    x, dy, w, _ = _case(np.random.default_rng(1), 6, 40, np.float64, True)
    _, mean, rstd = layernorm.layernorm_forward(x, None, None, 1e-5)
    dx, dw, db = layernorm.layernorm_backward(dy, x, None, mean, rstd, bias=False)
    assert dw is None and db is None
    np.testing.assert_allclose(dx, layernorm.layernorm_backward_ref(dy, x, None, mean, rstd)[0], rtol=0, atol=1e-12)
    _, mean, rstd = layernorm.layernorm_forward(x, w, None, 1e-5)
    dx, dw, db = layernorm.layernorm_backward(dy, x, w, mean, rstd)
    np.testing.assert_allclose(db, dy.sum(axis=0), rtol=1e-12)


def test_gradcheck_float64_through_the_emulated_kernels():
    """Central differences of the kernel forward vs the kernel backward (minigrad.gradcheck)."""
    import minigrad
    from minigrad.kernels import layernorm
    from minigrad.autograd import Function

    class KernelLayerNorm(Function):
        def forward(self, x, w, b):
            y, self.mean, self.rstd = layernorm.layernorm_forward(x, w, b, 1e-5)
            self.x, self.w = x, w
            return y

        def backward(self, g):
            dx, dw, db = layernorm.layernorm_backward(np.ascontiguousarray(g.data), self.x, self.w, self.mean, self.rstd)
            return minigrad.Tensor(dx), minigrad.Tensor(dw), minigrad.Tensor(db)

    rng = np.random.default_rng(0)
    for N, C in ((3, 7), (2, 40), (1, 1030)):
        x = minigrad.Tensor(rng.standard_normal((N, C)), requires_grad=True)
        w = minigrad.Tensor(1 + 0.3 * rng.standard_normal(C), requires_grad=True)
        b = minigrad.Tensor(rng.standard_normal(C), requires_grad=True)
        assert minigrad.gradcheck(lambda x, w, b: KernelLayerNorm.apply(x, w, b), (x, w, b), fast=C > 100)


def test_functional_layer_norm_runs_the_kernels_under_emulate(monkeypatch, fast_paths):
    """MINIGRAD_KERNELS=emulate routes F.layer_norm through the kernels; gradcheck in float64."""
    import minigrad
    import minigrad.nn.functional as F
    from minigrad.kernels import layernorm

    calls = []
    for name in ("layernorm_forward", "layernorm_backward"):
        real = getattr(layernorm, name)
        monkeypatch.setattr(layernorm, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    monkeypatch.setenv("MINIGRAD_KERNELS", "emulate")
    rng = np.random.default_rng(1)
    x = minigrad.Tensor(rng.standard_normal((2, 3, 16)), requires_grad=True)
    w = minigrad.Tensor(1 + 0.3 * rng.standard_normal(16), requires_grad=True)
    b = minigrad.Tensor(rng.standard_normal(16), requires_grad=True)
    assert minigrad.gradcheck(lambda x, w, b: F.layer_norm(x, 16, w, b), (x, w, b))
    assert "layernorm_forward" in calls and "layernorm_backward" in calls


@pytest.mark.parametrize("bad,err,match", [
    (lambda x, w: (x.T, w, None), ValueError, "x must be C-contiguous"),
    (lambda x, w: (x.astype(np.int32), None, None), TypeError, "x must be float32 or float64"),
    (lambda x, w: (x[0], w, None), ValueError, "x must be 2-D"),
    (lambda x, w: (x, w[:-1].copy(), None), ValueError, "weight has 7 elements but x rows have width 8"),
    (lambda x, w: (x, w.astype(np.float32), None), TypeError, "weight must have dtype float64"),
    (lambda x, w: (x, None, w[::2]), ValueError, "bias must be C-contiguous"),
    (lambda x, w: ([[1.0]], None, None), TypeError, "x must be a numpy or cupy array"),
])
def test_bad_forward_input_raises_before_launch(monkeypatch, bad, err, match):
    from minigrad.kernels import layernorm, runtime

    monkeypatch.setattr(runtime.Program, "launch", lambda *a, **k: pytest.fail("launched despite bad input"))
    x = np.random.default_rng(0).standard_normal((8, 8))
    w = np.ones(8)
    with pytest.raises(err, match=match):
        layernorm.layernorm_forward(*bad(x, w), 1e-5)


def test_bad_backward_input_raises_before_launch(monkeypatch):
    from minigrad.kernels import layernorm, runtime

    monkeypatch.setattr(runtime.Program, "launch", lambda *a, **k: pytest.fail("launched despite bad input"))
    x = np.zeros((4, 5))
    m = np.zeros(4)
    with pytest.raises(ValueError, match="dy must have shape"):
        layernorm.layernorm_backward(np.zeros((4, 6)), x, None, m, m)
    with pytest.raises(TypeError, match="rstd must have dtype float64"):
        layernorm.layernorm_backward(x, x, None, m, m.astype(np.float32))
    with pytest.raises(ValueError, match="mean must have shape"):
        layernorm.layernorm_backward(x, x, None, np.zeros(3), m)
