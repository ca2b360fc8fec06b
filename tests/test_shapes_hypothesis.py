"""Hypothesis-drawn shapes for the registry's elementwise / binary / reduce / shape / linalg ops
(and the nn entries marked hypothesis=True), including broadcasting, size-1 and zero-size dimensions.

Each drawn case checks: the forward against the op's NumPy reference (or the same error class
when NumPy refuses the shape), and the gradients against central differences (gradcheck; its
fast directional mode for the larger cases). Every case checks that each gradient has its input's
shape (so empty for empty inputs); an empty output must give all-zero gradients.

The draws are random on every run (tests/conftest.py prints the run's seed on failure; rerun with
pytest --hypothesis-seed=N). A failing drawn case prints a line "regression entry: (...)"; add it
to REGRESSIONS below and it is checked on every later run, in CI too (a fresh clone has no
hypothesis database, so the database alone would forget it).
"""
import warnings

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the shape tests need the 'hypothesis' dev dependency")
from conftest import assert_close
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import Tensor
from minigrad.opinfo import BY_NAME, OPS

KINDS = ("elementwise", "binary", "reduce", "shape", "linalg", "nn")
SIDE = dict(min_side=0, max_side=4)


def _any(min_dims=0, max_dims=3):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, **SIDE)


def _one(strategy):
    return strategy.map(lambda s: (s,))


def _set(shape, i, v):
    s = list(shape)
    s[i] = v
    return tuple(s)


def _matmul(a_1d, b_1d):
    """Shapes for a @ b keeping the 1-D/N-D pattern of the registry entry; batch dims broadcast."""
    dims = st.integers(0, 4)
    batch = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, **SIDE)

    def build(n, k, m, b):
        ba, bb = b.input_shapes
        return ((k,) if a_1d else ba + (n, k), (k,) if b_1d else bb + (k, m))
    return st.builds(build, dims, dims, dims, batch)


# per-op input-shape strategies where the kind alone does not fix them (the op has fixed axes/args)
SPECIAL = {
    "sum_axis": _one(_any(2, 4)),
    "mean_axes": _one(_any(3, 4)),
    "max_axis": _one(_any(1, 3)),
    "var": _one(_any(1, 3)),
    "reshape": _one(st.sampled_from([(24,), (2, 12), (4, 6), (2, 3, 4), (1, 24, 1), (3, 1, 8), (2, 2, 2, 3)])),
    "transpose": _one(_any(3, 3)),
    "swapaxes": _one(_any(1, 4)),
    "squeeze": _one(_any(2, 4).map(lambda s: _set(s, 1, 1))),
    "expand_dims": _one(_any(0, 3)),
    "broadcast_to": _one(hnp.broadcastable_shapes((2, 3, 4), min_dims=0, max_dims=3)),
    "getitem_slice": _one(_any(3, 3)),
    "getitem_repeat": _one(_any(1, 3).map(lambda s: (3 + s[0] % 2,) + s[1:])),
    "concatenate": st.builds(lambda s, n: (s, _set(s, 1, n)), _any(2, 3), st.integers(0, 3)),
    "stack": _any(0, 3).map(lambda s: (s, s)),
    "split": _one(_any(2, 3)),
    # nn entries drawn too when they are elementwise or reduce along one axis
    "gelu": _one(_any()),
    "gelu_tanh": _one(_any()),
    "softmax": _one(_any(1, 3)),
    "log_softmax": _one(_any(1, 3)),
    "logsumexp": _one(_any(1, 3)),
    "mse_loss": _any(0, 3).map(lambda s: (s, s)),
}


def shapes_for(op):
    if op.name in SPECIAL:
        return SPECIAL[op.name]
    if op.kind == "elementwise":
        return _one(_any())
    if op.kind == "binary":
        return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, **SIDE).map(
            lambda r: r.input_shapes)
    if op.kind == "reduce":
        return _one(_any())
    if op.kind == "linalg":
        return _matmul(len(op.shapes[0]) == 1, len(op.shapes[1]) == 1)
    raise AssertionError(f"no shape strategy for op {op.name!r} (kind {op.kind}): add one to SPECIAL")


HYP = [op for op in OPS if op.hypothesis and op.kind in KINDS]


def test_every_hypothesis_op_of_these_kinds_is_drawn():
    assert len(HYP) >= 30
    for op in HYP:
        shapes_for(op)   # raises for an op with no strategy


def _reference(op, arrays):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)      # mean of an empty axis is nan in both
        try:
            return op.ref(*arrays), None
        except (ValueError, IndexError) as e:
            return None, type(e)


def check_case(op, shapes, seed):
    arrays = op.inputs(np.random.default_rng(seed), np.float64, shapes=list(shapes))
    want, refused = _reference(op, arrays)
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    if refused is not None:
        with pytest.raises(refused):
            op.fn(*ts)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = op.fn(*ts)
    assert_close(out, want, np.float64, err_msg=f"{op.name} {shapes}")
    out.backward(Tensor(np.ones(out.shape)))
    for t in ts:
        assert t.grad is not None and t.grad.shape == t.shape, f"{op.name} {shapes}: grad shape"
        if out.size == 0:
            assert not np.any(t.grad.numpy()), f"{op.name} {shapes}: an empty output gave nonzero grads"
    if out.size == 0:
        return
    if not np.all(np.isfinite(want)):
        return   # e.g. var over an empty axis: nan, nothing to differentiate
    big = out.size + sum(a.size for a in arrays) > 48
    assert mg.gradcheck(op.fn, ts, fast=big, seed=seed)


@pytest.mark.parametrize("op", HYP, ids=[op.name for op in HYP])
@settings(max_examples=25)
@given(data=st.data())
def test_drawn_shapes_forward_and_gradients(op, data):
    shapes = data.draw(shapes_for(op), label="shapes")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    note(f"regression entry: ({op.name!r}, {tuple(shapes)!r}, {seed}),")
    check_case(op, shapes, seed)


# (op name, input shapes, seed): drawn cases kept as explicit checks. Failures found by the draws
# go here (see the module docstring); the first entries are edge cases worth checking every run.
REGRESSIONS = [
    ("matmul_batched_broadcast", ((0, 1, 3, 4), (3, 4, 2)), 0),     # an empty batch
    ("matmul_1d_3d", ((0,), (2, 0, 3)), 0),                         # an empty contraction: zeros
    ("add", ((), (2, 0)), 0),                                       # a 0-d input against an empty one
    ("max_axis", ((3, 1),), 5),                                     # a reduction over a size-1 axis
    ("broadcast_to", ((1,),), 1),
    ("getitem_slice", ((1, 0, 2),), 0),
]


@pytest.mark.parametrize("name,shapes,seed", REGRESSIONS, ids=[f"{n}-{s}" for n, s, _ in REGRESSIONS])
def test_regression_cases(name, shapes, seed):
    check_case(BY_NAME[name], shapes, seed)


# ------------------------------------------------------------------ reductions with drawn axes

@settings(max_examples=40)
@given(shape=_any(0, 4), data=st.data())
def test_reductions_over_drawn_axes(shape, data):
    nd = len(shape)
    axis = data.draw(st.none() | (st.integers(-nd, nd - 1) if nd else st.none())
                     | st.lists(st.integers(0, max(nd - 1, 0)), min_size=1, max_size=nd, unique=True).map(tuple)
                     if nd else st.none(), label="axis")
    keepdims = data.draw(st.booleans(), label="keepdims")
    name = data.draw(st.sampled_from(["sum", "mean", "max", "var"]), label="reduction")
    a = np.random.default_rng(7).permutation(int(np.prod(shape))).reshape(shape) * 0.25 - 1.0  # no ties
    x = Tensor(a.copy(), requires_grad=True)
    np_axis = axis
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            want = getattr(a, name)(axis=np_axis, keepdims=keepdims)
        except ValueError:
            with pytest.raises(ValueError):
                getattr(x, name)(axis=axis, keepdims=keepdims)
            return
        got = getattr(x, name)(axis=axis, keepdims=keepdims)
    assert_close(got, want, err_msg=f"{name} axis={axis} keepdims={keepdims}")
    got.backward(Tensor(np.ones(got.shape)))
    assert x.grad.shape == x.shape
    if a.size == 0 or not np.all(np.isfinite(want)):
        return
    # gradient of the sum of the reduction, by an independent NumPy formula
    ax = tuple(range(nd)) if axis is None else tuple(np.atleast_1d(axis) % nd)
    n = int(np.prod([shape[i] for i in ax]))
    if name == "sum":
        g = np.ones(shape)
    elif name == "mean":
        g = np.full(shape, 1.0 / n)
    elif name == "max":
        g = (a == a.max(axis=ax, keepdims=True)).astype(float)
    else:
        g = 2.0 * (a - a.mean(axis=ax, keepdims=True)) / n
    assert_close(x.grad, g, err_msg=f"d sum({name}(x, axis={axis}))/dx")


# ------------------------------------------------------------------ broadcasting gradients reduce back

@settings(max_examples=40)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, **SIDE))
def test_broadcast_gradients_sum_back_to_each_input_shape(shapes):
    sa, sb = shapes.input_shapes
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    x, y = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = x * y
    assert out.shape == shapes.result_shape
    out.backward(Tensor(np.ones(out.shape)))
    # d sum(a*b)/da = b broadcast to the result, summed back over broadcast axes (and vice versa)
    ga = np.broadcast_to(b, shapes.result_shape) * np.ones(shapes.result_shape)
    gb = np.broadcast_to(a, shapes.result_shape) * np.ones(shapes.result_shape)

    def sum_to(g, s):
        lead = g.ndim - len(s)
        g = g.sum(axis=tuple(range(lead))) if lead else g
        ax = tuple(i for i, n in enumerate(s) if n == 1 and g.shape[i] != 1)
        return g.sum(axis=ax, keepdims=True) if ax else g
    assert_close(x.grad, sum_to(ga, sa).reshape(sa))
    assert_close(y.grad, sum_to(gb, sb).reshape(sb))
