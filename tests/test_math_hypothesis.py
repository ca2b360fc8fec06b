"""Hypothesis-drawn shapes for issue 17's ops that the generic shape tests cannot draw: scans,
order and reductions along a drawn axis (the registry's "axis" entries fix one), the losses and
glu (nn entries), and the forward-only registry (OPS_MATH_NOGRAD) with broadcasting shapes.

Each case: the forward against NumPy (or the same error class where NumPy refuses), then for the
differentiable ones the gradient shape, zero gradients for an empty output, and gradcheck (its fast
directional mode for the larger cases). A 0-d tensor takes axis 0 or -1 as in PyTorch: its
reference is the op on the one-element vector, reshaped back.
"""
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the shape tests need the 'hypothesis' dev dependency")
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
import minigrad.nn.functional as F
from minigrad import Tensor
from minigrad.opinfo import OPS_MATH, OPS_MATH_NOGRAD

SIDE = dict(min_side=0, max_side=4)


def _distinct(rng, shape):
    """Distinct values with distinct |x|, none near 0: sort, topk, norms and argmax have no ties."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) * 0.25 + 0.1) * rng.choice([-1.0, 1.0], n)).reshape(shape)


def _normal(rng, shape):
    return rng.standard_normal(shape)


def _some_zeros(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(rng.random(shape) < 0.25, 0.0, x)


def _along(f):
    """NumPy's f(a, axis), with PyTorch's reading of axis 0/-1 on a 0-d array."""
    def ref(a, axis, *args):
        if a.ndim == 0:
            return np.asarray(f(a.reshape(1), 0, *args)).reshape(())
        return f(a, axis, *args)
    return ref


def _topk_ref(a, axis, k, largest):
    order = np.argsort(-a if largest else a, axis=axis, kind="stable")
    return np.take_along_axis(a, np.take(order, np.arange(k), axis=axis), axis=axis)


# name: (minigrad(x, axis, extra), numpy(a, axis, extra), sample, differentiable, extra strategy(size along axis))
AXIS_CASES = {
    "cumsum": (lambda x, ax, e: x.cumsum(ax), _along(np.cumsum), _normal, True, None),
    "cumprod": (lambda x, ax, e: x.cumprod(ax), _along(np.cumprod), _some_zeros, True, None),
    "logcumsumexp": (lambda x, ax, e: x.logcumsumexp(ax), _along(np.logaddexp.accumulate), _normal, True, None),
    "sort": (lambda x, ax, e: x.sort(ax, descending=e).values,
             _along(lambda a, ax, d: -np.sort(-a, ax) if d else np.sort(a, ax)), _distinct, True,
             lambda n: st.booleans()),
    "topk": (lambda x, ax, e: x.topk(e[0], ax, largest=e[1]).values, _along(lambda a, ax, e: _topk_ref(a, ax, *e)),
             _distinct, True, lambda n: st.tuples(st.integers(0, n), st.booleans())),
    "argsort": (lambda x, ax, e: x.argsort(ax, descending=e),
                _along(lambda a, ax, d: np.argsort(-a if d else a, ax, kind="stable")), _distinct, False,
                lambda n: st.booleans()),
    "argmax": (lambda x, ax, e: x.argmax(ax, keepdims=e), _along(lambda a, ax, k: np.argmax(a, ax, keepdims=k)),
               _distinct, False, lambda n: st.booleans()),
    "argmin": (lambda x, ax, e: x.argmin(ax, keepdims=e), _along(lambda a, ax, k: np.argmin(a, ax, keepdims=k)),
               _distinct, False, lambda n: st.booleans()),
}

# reductions over a drawn tuple of axes (or None)
REDUCE_CASES = {
    "prod": (lambda x, ax, k: x.prod(ax, k), lambda a, ax, k: a.prod(ax, keepdims=k), _some_zeros, True),
    "std": (lambda x, ax, k: x.std(ax, k, ddof=1), lambda a, ax, k: a.std(ax, keepdims=k, ddof=1), _distinct, True),
    "norm1": (lambda x, ax, k: x.norm(1, ax, k), lambda a, ax, k: np.abs(a).sum(ax, keepdims=k), _distinct, True),
    "norm2": (lambda x, ax, k: x.norm(2, ax, k), lambda a, ax, k: np.sqrt((a * a).sum(ax, keepdims=k)), _normal,
              True),
    "norm_inf": (lambda x, ax, k: x.norm(np.inf, ax, k), lambda a, ax, k: np.abs(a).max(ax, keepdims=k), _distinct,
                 True),
    "norm_-inf": (lambda x, ax, k: x.norm(-np.inf, ax, k), lambda a, ax, k: np.abs(a).min(ax, keepdims=k),
                  _distinct, True),
    "any": (lambda x, ax, k: (x > 0.5).any(ax, k), lambda a, ax, k: (a > 0.5).any(ax, keepdims=k), _normal, False),
    "all": (lambda x, ax, k: (x > -0.5).all(ax, k), lambda a, ax, k: (a > -0.5).all(ax, keepdims=k), _normal, False),
}

# which drawn case covers each registry entry that the generic shape tests skip
COVERS = {"prod_axis_zeros": "prod", "std": "std", "norm2_axis": "norm2", "norm_inf": "norm_inf",
          "cumsum": "cumsum", "cumsum_flat": "cumsum", "cumprod": "cumprod", "cumprod_zeros": "cumprod",
          "logcumsumexp": "logcumsumexp", "logcumsumexp_wide": "logcumsumexp", "sort": "sort",
          "sort_descending": "sort", "topk": "topk", "topk_smallest": "topk",
          "cross_entropy_smoothing_weights": "cross_entropy"}


def test_every_math_entry_is_drawn_somewhere():
    drawn = set(AXIS_CASES) | set(REDUCE_CASES) | set(LOSS_CASES) | {"glu"}
    for op in OPS_MATH:
        generic = op.hypothesis and op.kind in ("elementwise", "binary", "reduce")
        assert generic or COVERS.get(op.name, op.name) in drawn, f"{op.name}: no drawn shapes anywhere"


def _check(name, fn, ref, a, differentiable, seed, exact=False):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            want = np.asarray(ref(a))
        except (ValueError, IndexError) as e:
            with pytest.raises(type(e) if not isinstance(e, np.exceptions.AxisError) else IndexError):
                fn(Tensor(a.copy(), requires_grad=differentiable))
            return
        x = Tensor(a.copy(), requires_grad=differentiable)
        out = fn(x)
    if exact:
        assert out.shape == want.shape and out.dtype == want.dtype and np.array_equal(out.numpy(), want), name
        assert not out.requires_grad
        return
    assert_close(out, want, err_msg=f"{name} {a.shape}")
    if not differentiable:
        return
    out.backward(Tensor(np.ones(out.shape)))
    assert x.grad is not None and x.grad.shape == x.shape, f"{name}: grad shape"
    if out.size == 0:
        assert not np.any(x.grad.numpy()), f"{name}: an empty output gave nonzero grads"
        return
    if not np.all(np.isfinite(want)):
        return
    x = Tensor(a.copy(), requires_grad=True)
    assert mg.gradcheck(fn, [x], fast=out.size + a.size > 48, seed=seed)


def _axis_strategy(nd):
    return st.sampled_from([0, -1]) if nd == 0 else st.integers(-nd, nd - 1)


@pytest.mark.parametrize("name", sorted(AXIS_CASES))
@settings(max_examples=20)
@given(data=st.data())
def test_drawn_shapes_and_axes(name, data):
    fn, ref, sample, differentiable, extra = AXIS_CASES[name]
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), label="shape")
    axis = data.draw(_axis_strategy(len(shape)), label="axis")
    n = shape[axis] if shape else 1
    e = data.draw(extra(n), label="extra") if extra else None
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    a = sample(np.random.default_rng(seed), shape)
    _check(name, lambda x: fn(x, axis, e), lambda a: ref(a, axis, *(() if e is None else (e,))), a, differentiable,
           seed, exact=not differentiable)


@pytest.mark.parametrize("name", sorted(REDUCE_CASES))
@settings(max_examples=20)
@given(data=st.data())
def test_drawn_reductions(name, data):
    fn, ref, sample, differentiable = REDUCE_CASES[name]
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), label="shape")
    nd = len(shape)
    axis = data.draw(st.none() | st.lists(st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple)
                     if nd else st.none(), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    a = sample(np.random.default_rng(seed), shape)
    group = int(np.prod([shape[i] for i in (range(nd) if axis is None else axis)]))
    if name == "std" and group < 2:
        differentiable = False          # n - ddof <= 0: inf or NaN, nothing to differentiate
    _check(name, lambda x: fn(x, axis, keepdims), lambda a: ref(a, axis, keepdims), a, differentiable, seed,
           exact=name in ("any", "all"))


# ------------------------------------------------------------------ losses and glu over drawn shapes

def _logp(x):
    m = x.max(-1, keepdims=True) if x.shape[-1] else 0
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _ce_ref(x, t, w, eps, reduction):
    c = x.shape[-1]
    valid = t >= 0
    q = (1 - eps) * np.eye(c)[np.where(valid, t, 0)] + eps / c
    per = -(w * q * _logp(x)).sum(-1) * valid
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    total = (w[np.where(valid, t, 0)] * valid).sum()
    return per.sum() / total if total else np.nan


def _reduce(v, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](v)


LOSS_CASES = {
    "cross_entropy": "class targets, weights, ignore_index, label_smoothing",
    "nll_loss": "class targets, weights, ignore_index",
    "cross_entropy_probs": "probability targets",
    "binary_cross_entropy": "", "binary_cross_entropy_with_logits": "", "l1_loss": "", "smooth_l1_loss": "",
    "huber_loss": "", "kl_div": "", "kl_div_log_target": "", "mse_loss": "",
}


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
@settings(max_examples=15)
@given(data=st.data())
def test_drawn_losses(name, data):
    lead = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=3), label="lead")
    c = data.draw(st.integers(1, 4), label="classes")
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]), label="reduction")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    rng = np.random.default_rng(seed)
    shape = lead + (c,)
    x = rng.standard_normal(shape)
    if name in ("cross_entropy", "nll_loss"):
        t = rng.integers(-1, c, lead)                               # -1: ignored
        w = rng.uniform(0.5, 2.0, c)
        eps = data.draw(st.sampled_from([0.0, 0.25]), label="smoothing") if name == "cross_entropy" else 0.0
        if name == "cross_entropy":
            def fn(t_):
                return F.cross_entropy(t_, t, weight=w, ignore_index=-1, reduction=reduction, label_smoothing=eps)
            want = _ce_ref(x, t, w, eps, reduction)
        else:
            def fn(t_):
                return F.nll_loss(F.log_softmax(t_), t, weight=w, ignore_index=-1, reduction=reduction)
            want = _ce_ref(x, t, w, 0.0, reduction)
        args, ref = [x], None
    else:
        y = {"binary_cross_entropy": rng.uniform(0, 1, shape), "kl_div_log_target": _logp(rng.standard_normal(shape)),
             "kl_div": np.exp(_logp(rng.standard_normal(shape))),
             "cross_entropy_probs": np.exp(_logp(rng.standard_normal(shape)))}.get(name, rng.standard_normal(shape))
        if name == "binary_cross_entropy":
            x = rng.uniform(0.05, 0.95, shape)
        if name in ("l1_loss", "smooth_l1_loss", "huber_loss"):
            x = y + _distinct(rng, shape) * 0.3                    # |x - y| away from 0 and the kinks
            x = np.where(np.abs(np.abs(x - y) - 0.5) < 0.05, x + 0.2, x)
        fns = {
            "cross_entropy_probs": (lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                                    lambda a, b: _reduce(-(b * _logp(a)).sum(-1), reduction)),
            "binary_cross_entropy": (lambda a, b: F.binary_cross_entropy(a, b, reduction=reduction),
                                     lambda a, b: _reduce(-(b * np.log(a) + (1 - b) * np.log1p(-a)), reduction)),
            "binary_cross_entropy_with_logits": (
                lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=reduction),
                lambda a, b: _reduce(b * np.logaddexp(0, -a) + (1 - b) * np.logaddexp(0, a), reduction)),
            "l1_loss": (lambda a, b: F.l1_loss(a, b, reduction), lambda a, b: _reduce(np.abs(a - b), reduction)),
            "smooth_l1_loss": (lambda a, b: F.smooth_l1_loss(a, b, reduction, beta=0.5),
                               lambda a, b: _reduce(np.where(np.abs(a - b) < 0.5, (a - b) ** 2,
                                                             np.abs(a - b) - 0.25), reduction)),
            "huber_loss": (lambda a, b: F.huber_loss(a, b, reduction, delta=0.5),
                           lambda a, b: _reduce(np.where(np.abs(a - b) < 0.5, 0.5 * (a - b) ** 2,
                                                         0.5 * (np.abs(a - b) - 0.25)), reduction)),
            "kl_div": (lambda a, b: F.kl_div(a, b, reduction), lambda a, b: _reduce(b * (np.log(b) - a), reduction)),
            "kl_div_log_target": (lambda a, b: F.kl_div(a, b, reduction, log_target=True),
                                  lambda a, b: _reduce(np.exp(b) * (b - a), reduction)),
            "mse_loss": (lambda a, b: F.mse_loss(a, b, reduction), lambda a, b: _reduce((a - b) ** 2, reduction)),
        }
        fn2, ref = fns[name]
        args = [x, y]
        fn = fn2
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            want = ref(x, y)
    ts = [Tensor(a.copy(), requires_grad=True) for a in args]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fn(*ts)
    assert_close(out, np.asarray(want), err_msg=f"{name} {shape} {reduction}")
    if out.size == 0 or not np.all(np.isfinite(want)):
        return
    ts = [Tensor(a.copy(), requires_grad=True) for a in args]
    assert mg.gradcheck(fn, ts, fast=sum(a.size for a in args) + out.size > 48, seed=seed)


@settings(max_examples=20)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, **SIDE), data=st.data())
def test_drawn_glu(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    a = np.random.default_rng(0).standard_normal(shape)
    if shape[axis] % 2:
        with pytest.raises(ValueError, match="glu"):
            F.glu(Tensor(a), axis)
        return
    h = shape[axis] // 2
    lo, hi = np.split(a, [h], axis=axis)
    _check("glu", lambda x: F.glu(x, axis), lambda a: lo * (0.5 * (1 + np.tanh(0.5 * hi))), a, True, 0)


# ------------------------------------------------------------------ forward-only entries, broadcasting shapes

ELEMENTWISE_NOGRAD = [op for op in OPS_MATH_NOGRAD if op.kind in ("elementwise", "binary")]


@pytest.mark.parametrize("op", ELEMENTWISE_NOGRAD, ids=[op.name for op in ELEMENTWISE_NOGRAD])
@settings(max_examples=20)
@given(data=st.data())
def test_drawn_shapes_of_forward_only_ops(op, data):
    if op.kind == "binary":
        shapes = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, **SIDE)
                           .map(lambda r: r.input_shapes), label="shapes")
    else:
        shapes = (data.draw(hnp.array_shapes(min_dims=0, max_dims=3, **SIDE), label="shape"),)
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    arrays = op.inputs(np.random.default_rng(seed), np.float64, shapes=list(shapes))
    want = np.asarray(op.ref(*arrays))
    out = op.fn(*[Tensor(a.copy()) for a in arrays])
    assert out.shape == want.shape and out.dtype == want.dtype and np.array_equal(out.numpy(), want), op.name
