"""Gradients at the precision float64 supports, for every registered op and implementation.

1. gradcheck and gradgradcheck with ``OpInfo.tolerances`` (gradient_check.float64_tolerances with the
   entry's third-derivative bound; minigrad/gradient_check.py states the
   bound: |numeric - exact| <= eps^2 M3/6 + 16 u M0/eps, about 2e-9 for outputs of order one)
   instead of PyTorch's defaults (atol 1e-5, rtol 1e-3), which let a derivative constant off in
   its fifth digit through.
2. Closed forms: for each op whose vector-Jacobian product has a short formula, that formula in
   float64 NumPy, written here independently of the op (explicit Jacobians where the op uses a
   row-sum identity), against the op's plain backward at ULPS units of roundoff of the result's
   scale S (the largest magnitude of the expected gradient): both sides take at most about 8
   roundings of terms no larger than a few S per element, so they differ by at most 8 eps S;
   ULPS = 16 gives a factor 2 for terms larger than the result.

Both run under each implementation the op declares (conftest.IMPLS, switched by conftest.use_impl).
"""
import math

import numpy as np
import pytest
from conftest import use_impl

import minigrad as mg
from minigrad import Tensor
from minigrad.gradient_check import float64_tolerances
from minigrad.opinfo import BY_NAME, OPS

EPS = float(np.finfo(np.float64).eps)
ULPS = 16


def _impl_cases(ops):
    return [(op, name) for op in ops for name in ("reference", "native", "emulate")
            if name == "reference" or name in op.variants]


def _ids(cases):
    return [f"{op.name}-{name}" for op, name in cases]


def _tensors(arrays):
    return [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]


CASES = _impl_cases(OPS)
# second order differentiates the create_graph formula, which is the same Tensor-op code under every
# switch: the emulated kernels would only add their forward, at many seconds per op
SECOND = [c for c in CASES if c[0].second_order and c[1] != "emulate"]


@pytest.mark.parametrize("op,impl_name", CASES, ids=_ids(CASES))
def test_gradcheck_at_float64_tolerance(monkeypatch, op, impl_name):
    use_impl(monkeypatch, impl_name)
    ts = _tensors(op.inputs(np.random.default_rng(1), np.float64, shapes=op.variant_shapes.get(impl_name)))
    assert mg.gradcheck(op.fn, ts, **op.tolerances(ts))


@pytest.mark.parametrize("op,impl_name", SECOND, ids=_ids(SECOND))
def test_gradgradcheck_at_float64_tolerance(monkeypatch, op, impl_name):
    use_impl(monkeypatch, impl_name)
    ts = _tensors(op.inputs(np.random.default_rng(2), np.float64, shapes=op.variant_shapes.get(impl_name)))
    assert mg.gradgradcheck(op.fn, ts, **op.tolerances(ts, order=2))


def test_float64_tolerances_state_the_bound():
    x = Tensor(np.array([0.5, -3.0]), requires_grad=True)
    t = float64_tolerances(lambda a: a * 4.0, [x])          # M0 = 12 (outputs) x 3 (inputs)
    u = 2.0 ** -53
    assert t["eps"] == 1e-6 and t["rtol"] == 0.0
    assert t["atol"] == pytest.approx(1e-12 * 1e3 / 6 + 16 * u * 36 / 1e-6, rel=1e-12)
    assert t["atol"] < 1e-7                                # far below PyTorch's atol 1e-5
    # order 2 checks the first-order gradient 8 a v, v the grad_outputs gradgradcheck draws (seed + 1)
    v = np.random.default_rng(1).standard_normal(2)
    m0 = max(1.0, float(np.abs(8 * x.numpy() * v).max())) * 3.0
    t2 = float64_tolerances(lambda a: a * a * 4.0, [x], order=2)
    assert t2["atol"] == pytest.approx(1e-12 * 1e3 / 6 + 16 * u * m0 / 1e-6, rel=1e-12) and t2["rtol"] == 0.0
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        float64_tolerances(lambda a: a, [x], order=3)


# ------------------------------------------------------------------ closed forms

SQRT_2PI = math.sqrt(2 * math.pi)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _phi(x):
    return 0.5 * (1 + _erf(x / math.sqrt(2))), np.exp(-0.5 * x * x) / SQRT_2PI


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_vjp_explicit(p, dp):
    """dpᵀ J for J = diag(p) - p pᵀ, row by row (the op uses p (dp - Σ p dp))."""
    jac = np.einsum("...i,ij->...ij", p, np.eye(p.shape[-1])) - p[..., :, None] * p[..., None, :]
    return np.einsum("...ij,...i->...j", jac, dp)


def _layer_norm_vjp(x, w, g, eps=1e-5):
    """dx from the explicit Jacobian dxhat_j/dx_i = rstd (δij - 1/C - xhat_i xhat_j / C); dw, db."""
    c = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xh = (x - mu) * rstd
    jac = rstd[..., None] * (np.eye(c) - 1.0 / c - xh[..., :, None] * xh[..., None, :] / c)   # (…, i, j)
    dx = np.einsum("...ij,...j->...i", jac, g * w)
    lead = tuple(range(x.ndim - 1))
    return dx, (g * xh).sum(lead), g.sum(lead)


def _sdpa_vjp(q, k, v, g, allowed=None, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.swapaxes(-1, -2) * scale
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    p = _softmax(s)
    dv = p.swapaxes(-1, -2) @ g
    ds = _softmax_vjp_explicit(p, g @ v.swapaxes(-1, -2)) * scale
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def _gelu_tanh_slope(x):
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _ce_vjp(a, g):
    tgt = np.array([1, 0, 3, 2, -100, 3])                   # the registry entry's targets
    valid = tgt >= 0
    d = _softmax(a)
    d[np.arange(len(tgt))[valid], tgt[valid]] -= 1
    return [d * valid[:, None] / valid.sum() * g]


def _gelu_mlp_vjp(x, w1, b1, w2, b2, g):
    h = x @ w1.T + b1
    cdf, pdf = _phi(h)
    dh = (g @ w2) * (cdf + h * pdf)
    return [dh @ w1, dh.T @ x, dh.sum(0), g.T @ (h * cdf), g.sum(0)]


_KEEP = np.array([True, True, False, True, False, True])
_CAUSAL = np.arange(6)[None, :] <= np.arange(4)[:, None] + 2

# name -> vjp(*inputs, g) -> [gradient of each input], in float64 NumPy
CLOSED = {
    "neg": lambda a, g: [-g],
    "pow_scalar": lambda a, g: [3 * a * a * g],
    "pow_half": lambda a, g: [0.5 / np.sqrt(a) * g],
    "exp": lambda a, g: [np.exp(a) * g],
    "log": lambda a, g: [g / a],
    "sqrt": lambda a, g: [0.5 / np.sqrt(a) * g],
    "tanh": lambda a, g: [(1 - np.tanh(a) ** 2) * g],
    "sigmoid": lambda a, g: [np.exp(-a) / (1 + np.exp(-a)) ** 2 * g],
    "relu": lambda a, g: [(a > 0) * g],
    "abs": lambda a, g: [np.sign(a) * g],
    "clip": lambda a, g: [((a >= -0.5) & (a <= 0.5)) * g],
    "gelu": lambda a, g: [(_phi(a)[0] + a * _phi(a)[1]) * g],
    "gelu_tanh": lambda a, g: [_gelu_tanh_slope(a) * g],
    "div": lambda a, b, g: [g / b, -g * a / (b * b)],
    "pow": lambda a, b, g: [g * b * a ** (b - 1), (g * a ** b * np.log(a)).sum(0)],      # b (4,) broadcasts
    "var": lambda a, g: [2 * (a - a.mean(0)) / a.shape[0] * g],
    "softmax": lambda a, g: [_softmax_vjp_explicit(_softmax(a), g)],
    "log_softmax": lambda a, g: [g - _softmax(a, 0) * g.sum(0, keepdims=True)],
    "logsumexp": lambda a, g: [_softmax(a) * g[:, None]],
    "cross_entropy": _ce_vjp,
    "mse_loss": lambda a, b, g: [2 * (a - b) / a.size * g, -2 * (a - b) / a.size * g],
    "layer_norm": lambda x, w, b, g: list(_layer_norm_vjp(x, w, g)),
    "linear": lambda x, w, b, g: [g @ w, np.einsum("bto,bti->oi", g, x), g.sum((0, 1))],
    "matmul_2d": lambda a, b, g: [g @ b.T, a.T @ g],
    "sdpa": lambda q, k, v, g: list(_sdpa_vjp(q, k, v, g)),
    "sdpa_causal_padded": lambda q, k, v, g: list(_sdpa_vjp(q, k, v, g, _CAUSAL & _KEEP)),
    "gelu_mlp": _gelu_mlp_vjp,
}
CLOSED_CASES = _impl_cases([BY_NAME[n] for n in CLOSED])


@pytest.mark.parametrize("op,impl_name", CLOSED_CASES, ids=_ids(CLOSED_CASES))
def test_plain_backward_matches_the_closed_form(monkeypatch, op, impl_name):
    use_impl(monkeypatch, impl_name)
    shapes = op.variant_shapes.get(impl_name)
    if op.name == "sdpa_causal_padded" and shapes:         # the closed form's causal mask is 4 x 6
        assert shapes[0][-2] == 4 and shapes[1][-2] == 6
    rng = np.random.default_rng(3)
    arrays = op.inputs(rng, np.float64, shapes=shapes)
    ts = _tensors(arrays)
    out = op.fn(*ts)
    g = rng.standard_normal(out.shape)
    out.backward(Tensor(g))
    want = CLOSED[op.name](*[a for a in arrays if a.dtype.kind == "f"], g)
    got = [t.grad.numpy() for t in ts if t.requires_grad]
    assert len(got) == len(want)
    for i, (a, e) in enumerate(zip(got, want)):
        e = np.broadcast_to(e, a.shape) if np.ndim(e) < a.ndim else e
        scale = float(np.abs(e).max(initial=0.0))
        np.testing.assert_allclose(a, e, rtol=0, atol=ULPS * EPS * scale,
                                   err_msg=f"{op.name} [{impl_name}]: gradient of input {i} vs its closed form")
