"""Issue 17's ops next to PyTorch (optional; torch is never a dependency): forward values, gradients
and, for a sample, second derivatives, in float64 with the same upstream gradient. This is where
the conventions that a NumPy reference cannot settle are pinned: gradients at zeros and kinks,
NaN order in sort, loss reductions with weights, smoothing and ignored targets."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0 for the parity tests")
TF = torch.nn.functional

from conftest import assert_close, run_torch

import minigrad as mg
from minigrad import Tensor
from minigrad.nn import functional as F

ULPS = 512   # float64; different evaluation orders differ by some hundred ulps at most


def normal(*s, scale=1.0):
    return lambda r: r.standard_normal(s) * scale


def uniform(lo, hi, *s):
    return lambda r: r.uniform(lo, hi, s)


def distinct(*s):
    return lambda r: (r.permutation(int(np.prod(s))).reshape(s) - np.prod(s) / 2 + 0.5) * 0.1


def with_zeros(*s):
    def make(r):
        x = r.standard_normal(s).reshape(-1)
        x[[1, 4, 5]] = 0.0
        return x.reshape(s)
    return make


def divisible(*s):
    return lambda r: (r.integers(0, 8, s) * 0.5 + r.uniform(0.1, 0.4, s)) * r.choice([-1.0, 1.0], s)


def divisors(*s):
    return lambda r: r.choice([0.5, 1.0, 2.0], s) * r.choice([-1.0, 1.0], s)


def off_integers(*s):
    return lambda r: r.integers(-3, 3, s) + r.uniform(0.1, 0.4, s) + 0.5 * r.integers(0, 2, s)


T6 = np.array([1, 0, 3, 2, -100, 3])
W4 = np.array([0.5, 2.0, 1.0, 1.5])
T23 = np.array([[1, -100, 3], [0, 2, 2]])            # (N=2, T=3) targets for (2, 3, 4) logits


def _tt(a):
    return torch.from_numpy(np.asarray(a))


def _classes_last(fn):
    """A torch loss taking (N, C, d...) called with minigrad's (N, d..., C) layout."""
    return lambda x, *rest: fn(x.movedim(-1, 1), *rest)


UNARY = [("sin", uniform(-3, 3, 3, 4)), ("cos", uniform(-3, 3, 3, 4)), ("tan", uniform(-1.2, 1.2, 3, 4)),
         ("asin", uniform(-0.9, 0.9, 3, 4)), ("acos", uniform(-0.9, 0.9, 3, 4)), ("atan", normal(3, 4)),
         ("sinh", normal(3, 4)), ("cosh", normal(3, 4)), ("asinh", normal(3, 4)), ("acosh", uniform(1.1, 3, 3, 4)),
         ("atanh", uniform(-0.9, 0.9, 3, 4)), ("log2", uniform(0.5, 2, 3, 4)), ("log10", uniform(0.5, 2, 3, 4)),
         ("log1p", uniform(-0.8, 2, 3, 4)), ("exp2", normal(3, 4)), ("expm1", normal(3, 4)),
         ("reciprocal", distinct(3, 4)), ("rsqrt", uniform(0.5, 2, 3, 4)), ("square", normal(3, 4)),
         ("erf", normal(3, 4)), ("erfc", uniform(-3, 5, 3, 4)), ("sign", distinct(3, 4)),
         ("floor", off_integers(3, 4)), ("ceil", off_integers(3, 4)), ("round", off_integers(3, 4)),
         ("trunc", off_integers(3, 4))]

def _method(name):
    return lambda a: getattr(a, name)()


def _torch_function(name):
    return lambda a: getattr(torch, name)(a)


CASES = [(name, _method(name), _torch_function(name), [m]) for name, m in UNARY] + [
    ("atan2", mg.atan2, torch.atan2, [normal(3, 4), normal(4)]),
    ("remainder", lambda a, b: a % b, torch.remainder, [divisible(3, 4), divisors(4)]),
    ("fmod", mg.fmod, torch.fmod, [divisible(3, 4), divisors(3, 1)]),
    ("pow_at_zero", lambda a, b: a ** b, torch.pow, [lambda r: np.zeros((2, 3)), uniform(0.5, 2, 2, 3)]),
    ("cumsum", lambda a: a.cumsum(1), lambda a: a.cumsum(1), [normal(3, 4)]),
    ("cumprod", lambda a: a.cumprod(0), lambda a: a.cumprod(0), [normal(4, 3)]),
    ("cumprod_zeros", lambda a: a.cumprod(-1), lambda a: a.cumprod(-1), [with_zeros(2, 4)]),
    ("logcumsumexp", lambda a: a.logcumsumexp(1), lambda a: torch.logcumsumexp(a, 1), [normal(3, 5, scale=20.0)]),
    ("prod", lambda a: a.prod(axis=1), lambda a: a.prod(1), [normal(3, 4)]),
    ("prod_zeros", lambda a: a.prod(axis=1), lambda a: a.prod(1), [with_zeros(3, 3)]),
    ("prod_all_zeros", lambda a: a.prod(), lambda a: a.prod(), [with_zeros(2, 3)]),
    ("std", lambda a: a.std(axis=0, ddof=1), lambda a: a.std(0), [normal(5, 3)]),
    ("norm2", lambda a: a.norm(axis=1), lambda a: torch.linalg.vector_norm(a, 2, dim=1), [normal(3, 4)]),
    ("norm2_at_zero", lambda a: (a * 0.0).norm(), lambda a: torch.linalg.vector_norm(a * 0.0), [normal(3)]),
    ("norm1", lambda a: a.norm(1, axis=0), lambda a: torch.linalg.vector_norm(a, 1, dim=0), [distinct(3, 4)]),
    ("norm_inf", lambda a: a.norm(np.inf, axis=1), lambda a: torch.linalg.vector_norm(a, np.inf, dim=1),
     [distinct(3, 4)]),
    ("sort", lambda a: a.sort(0, descending=True).values, lambda a: a.sort(0, descending=True).values,
     [distinct(4, 3)]),
    ("topk", lambda a: a.topk(2, axis=1).values, lambda a: a.topk(2, dim=1).values, [distinct(3, 5)]),
    # activations
    ("silu", F.silu, TF.silu, [normal(3, 4, scale=3.0)]),
    ("mish", F.mish, TF.mish, [normal(3, 4, scale=3.0)]),
    ("softplus", lambda a: F.softplus(a, beta=2.0, threshold=3.0), lambda a: TF.softplus(a, beta=2.0, threshold=3.0),
     [uniform(-3, 1.4, 3, 4)]),
    ("logsigmoid", F.logsigmoid, TF.logsigmoid, [normal(3, 4, scale=10.0)]),
    ("softsign", F.softsign, TF.softsign, [distinct(3, 4)]),
    ("leaky_relu", lambda a: F.leaky_relu(a, 0.2), lambda a: TF.leaky_relu(a, 0.2), [distinct(3, 4)]),
    ("elu", lambda a: F.elu(a, 0.7), lambda a: TF.elu(a, 0.7), [distinct(3, 4)]),
    ("selu", F.selu, TF.selu, [distinct(3, 4)]),
    ("celu", lambda a: F.celu(a, 0.6), lambda a: TF.celu(a, 0.6), [distinct(3, 4)]),
    # the samples hit the clip points exactly: the gradient there is a convention, and it is PyTorch's
    ("hardtanh", lambda a: F.hardtanh(a, -0.45, 0.55), lambda a: TF.hardtanh(a, -0.45, 0.55), [distinct(3, 4)]),
    ("relu6", F.relu6, TF.relu6, [lambda r: np.array([[-1.0, 0.0, 3.0, 6.0], [7.0, 0.0, 6.0, 2.5]])]),
    ("hardsigmoid", F.hardsigmoid, TF.hardsigmoid, [lambda r: np.array([[-4.0, -3.0, 0.0, 3.0], [4.0, -3.0, 3.0, 1.5]])]),
    ("hardswish", F.hardswish, TF.hardswish, [lambda r: np.array([[-4.0, -3.0, 0.0, 3.0], [4.0, -3.0, 3.0, 1.5]])]),
    ("glu", lambda a: F.glu(a, 0), lambda a: TF.glu(a, 0), [normal(4, 3)]),
    # losses (minigrad's classes are on the last axis; torch's on dim 1)
    ("nll_loss", lambda a: F.nll_loss(F.log_softmax(a), T6, weight=W4),
     lambda a: TF.nll_loss(torch.log_softmax(a, -1), _tt(T6), weight=_tt(W4)), [normal(6, 4)]),
    ("cross_entropy_weight_smoothing", lambda a: F.cross_entropy(a, T6, weight=W4, label_smoothing=0.2),
     lambda a: TF.cross_entropy(a, _tt(T6), weight=_tt(W4), label_smoothing=0.2), [normal(6, 4)]),
    ("cross_entropy_nd_sum", lambda a: F.cross_entropy(a, T23, weight=W4, reduction="sum", label_smoothing=0.1),
     _classes_last(lambda a: TF.cross_entropy(a, _tt(T23), weight=_tt(W4), reduction="sum", label_smoothing=0.1)),
     [normal(2, 3, 4)]),
    ("cross_entropy_nd_none", lambda a: F.cross_entropy(a, T23, reduction="none", label_smoothing=0.3),
     _classes_last(lambda a: TF.cross_entropy(a, _tt(T23), reduction="none", label_smoothing=0.3)),
     [normal(2, 3, 4)]),
    ("cross_entropy_probs", lambda a, p: F.cross_entropy(a, F.softmax(p), weight=W4, label_smoothing=0.1),
     lambda a, p: TF.cross_entropy(a, torch.softmax(p, -1), weight=_tt(W4), label_smoothing=0.1),
     [normal(5, 4), normal(5, 4)]),
    ("binary_cross_entropy", lambda p, t: F.binary_cross_entropy(p, t, weight=Tensor(W4[:3])),
     lambda p, t: TF.binary_cross_entropy(p, t, weight=_tt(W4[:3])), [uniform(0.05, 0.95, 4, 3),
                                                                      uniform(0, 1, 4, 3)]),
    ("binary_cross_entropy_with_logits",
     lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=Tensor(W4[:3]), reduction="sum"),
     lambda x, t: TF.binary_cross_entropy_with_logits(x, t, pos_weight=_tt(W4[:3]), reduction="sum"),
     [normal(4, 3, scale=5.0), uniform(0, 1, 4, 3)]),
    ("l1_loss", F.l1_loss, TF.l1_loss, [distinct(3, 4), lambda r: np.zeros((3, 4))]),
    ("smooth_l1_loss", lambda a, b: F.smooth_l1_loss(a, b, beta=0.45), lambda a, b: TF.smooth_l1_loss(a, b, beta=0.45),
     [distinct(3, 4), lambda r: np.zeros((3, 4))]),
    ("huber_loss", lambda a, b: F.huber_loss(a, b, "sum", 0.45), lambda a, b: TF.huber_loss(a, b, "sum", 0.45),
     [distinct(3, 4), lambda r: np.zeros((3, 4))]),
    ("kl_div", lambda a, t: F.kl_div(F.log_softmax(a), F.softmax(t), reduction="batchmean"),
     lambda a, t: TF.kl_div(torch.log_softmax(a, -1), torch.softmax(t, -1), reduction="batchmean"),
     [normal(3, 4), normal(3, 4)]),
    ("kl_div_log_target", lambda a, t: F.kl_div(a, t, reduction="sum", log_target=True),
     lambda a, t: TF.kl_div(a, t, reduction="sum", log_target=True), [normal(3, 4), normal(3, 4)]),
]


# PyTorch's backward kernels of these two use float32 constants (1.0f/6.0f, 1.0f/alpha) even in
# float64, so its gradients there are float32-accurate; minigrad's match mpmath to float64 (checked
# when this was written): compare at float32's resolution
TOLERANCE = {"hardsigmoid": (np.float32, 4), "celu": (np.float32, 4)}


def _run_minigrad(fn, arrays, go):
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(Tensor(go))
    return out, [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts]


@pytest.mark.parametrize("name,fn,tfn,makers", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_torch(name, fn, tfn, makers):
    rng = np.random.default_rng(0)
    arrays = [np.asarray(m(rng), np.float64) for m in makers]
    probe = fn(*[Tensor(a.copy()) for a in arrays])
    go = rng.standard_normal(probe.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out, grads = _run_minigrad(fn, arrays, go)
    tout, tgrads = run_torch(tfn, arrays, go)
    assert_close(out, tout, ulps=ULPS, err_msg=f"{name} forward")
    dtype, ulps = TOLERANCE.get(name, (np.float64, ULPS))
    for i, (g, tg) in enumerate(zip(grads, tgrads)):
        assert_close(g, tg, dtype, ulps=ulps, err_msg=f"{name} grad of input {i}")


# binary_cross_entropy is not here: PyTorch's double backward adds 1e-12 to p and 1 - p (about 1e-10
# relative); minigrad's exact second derivative is checked by gradgradcheck (tests/test_ops.py)
SECOND_ORDER = ["cumprod_zeros", "prod_zeros", "logcumsumexp", "remainder", "sort", "norm2", "softplus", "elu",
                "cross_entropy_weight_smoothing", "atan2", "erfc", "kl_div", "mish"]


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_derivatives_match_torch(name):
    """The Hessian-vector product of <f(x), go> along a random direction, both engines."""
    _, fn, tfn, makers = next(c for c in CASES if c[0] == name)
    rng = np.random.default_rng(1)
    arrays = [np.asarray(m(rng), np.float64) for m in makers]
    go = rng.standard_normal(fn(*[Tensor(a.copy()) for a in arrays]).shape)
    vs = [rng.standard_normal(a.shape) for a in arrays]
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    gs = mg.grad(fn(*ts), ts, Tensor(go), create_graph=True)
    hv = mg.grad(sum(((g * Tensor(v)).sum() for g, v in zip(gs, vs)), Tensor(np.array(0.0))), ts)
    tts = [torch.tensor(a, requires_grad=True) for a in arrays]
    tgs = torch.autograd.grad(tfn(*tts), tts, torch.from_numpy(go), create_graph=True)
    tsum = sum((g * torch.from_numpy(v)).sum() for g, v in zip(tgs, vs))
    thv = torch.autograd.grad(tsum, tts, allow_unused=True) if tsum.requires_grad else [None] * len(tts)
    for i, (h, th) in enumerate(zip(hv, thv)):
        want = np.zeros(arrays[i].shape) if th is None else th.numpy()
        assert_close(h if h is not None else np.zeros(arrays[i].shape), want, ulps=ULPS, err_msg=f"{name} input {i}")


def test_sort_with_nan_and_ties_orders_as_torch_stable():
    a = np.array([2.0, np.nan, 1.0, 2.0, -np.inf, 1.0, np.nan])
    for descending in (False, True):
        v, i = Tensor(a).sort(descending=descending)
        tv, ti = torch.from_numpy(a).sort(descending=descending, stable=True)
        assert i.numpy().tolist() == ti.numpy().tolist()
        assert np.array_equal(v.numpy(), tv.numpy(), equal_nan=True)


def test_integer_arithmetic_matches_torch():
    rng = np.random.default_rng(2)
    a, b = rng.integers(-20, 20, (4, 5)), rng.integers(1, 7, 5) * rng.choice([-1, 1], 5)
    x, y, ta, tb = Tensor(a), Tensor(b), torch.from_numpy(a), torch.from_numpy(b)
    for got, want in [(x // y, torch.floor_divide(ta, tb)), (x % y, torch.remainder(ta, tb)),
                      (mg.fmod(x, y), torch.fmod(ta, tb)), (x & y, ta & tb), (x | y, ta | tb), (x ^ y, ta ^ tb),
                      (~x, ~ta), (x >> 2, ta >> 2), (x << 3, ta << 3), (x / y, ta / tb), (x * 1.5, ta * 1.5),
                      (x.sin(), ta.sin())]:
        assert got.dtype == want.numpy().dtype, (got.dtype, want.dtype)
        assert_close(got.numpy().astype(np.float64), want.numpy().astype(np.float64), np.float32)
