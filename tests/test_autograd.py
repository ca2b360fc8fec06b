"""Autograd semantics: the iterative engine, accumulation, graph freeing, minigrad.grad, double
backward, no_grad, detect_anomaly, and gradient accumulation over micro-batches."""
import math
import os

import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
from minigrad import Tensor, nn
from minigrad.autograd import AnomalyError


def leaf(values, dtype=np.float64):
    return Tensor(np.asarray(values, dtype=dtype), requires_grad=True)


# ------------------------------------------------------------------ the engine

def test_backward_on_a_100000_op_chain_is_iterative():
    x = leaf(1.0)
    c = 1.0 + 1e-5
    y = x
    for _ in range(100_000):
        y = y * c
    y.backward()       # a recursive topological sort would hit the recursion limit (1000) here
    assert_close(x.grad, c ** 100_000, ulps=100_000)   # 100,000 roundings of the running product
    assert_close(y, c ** 100_000, ulps=100_000)


def test_diamond_graph_sums_both_paths():
    x = leaf([1.0, -2.0, 3.0])
    y = x * x
    z = y + y * 2.0 + x.exp()        # y reaches z twice
    z.sum().backward()
    assert_close(x.grad, 6.0 * x.numpy() + np.exp(x.numpy()))


def test_grads_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    assert_close(x.grad, 3.0 + 2.0 * x.numpy())


def test_only_leaves_keep_grad_and_detach_stops_the_flow():
    x = leaf([1.0, 2.0])
    h = x * 2.0
    (h * h.detach()).sum().backward()   # d/dx (2x * const 2x) = 2 * 2x
    assert h.grad is None
    assert_close(x.grad, 2.0 * 2.0 * x.numpy())


def test_second_backward_through_a_freed_graph_raises_clearly():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    assert_close(x.grad, 2 * first)


def test_backward_with_an_explicit_gradient():
    x = leaf([1.0, 2.0, 3.0])
    y = x * x
    y.backward(Tensor(np.array([1.0, 0.0, -1.0])))
    assert_close(x.grad, [2.0, 0.0, -6.0])
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        (x * x).backward(Tensor(np.ones(2)))


# ------------------------------------------------------------------ minigrad.grad

def test_grad_returns_gradients_without_touching_dot_grad():
    x, w = leaf([1.0, 2.0]), leaf([3.0, -1.0])
    unused = leaf([5.0])
    y = (x * w).sum()
    gx, gw, gu = mg.grad(y, [x, w, unused], retain_graph=True)
    assert x.grad is None and w.grad is None and unused.grad is None
    assert_close(gx, w.numpy())
    assert_close(gw, x.numpy())
    assert gu is None
    # grad_outputs weights a non-scalar output
    (g,) = mg.grad(x * w, x, grad_outputs=Tensor(np.array([2.0, 10.0])))
    assert_close(g, [6.0, -10.0])


def test_grad_frees_the_graph_unless_retained():
    x = leaf([1.0, 2.0])
    y = (x.tanh() * 2.0).sum()
    mg.grad(y, x)
    with pytest.raises(RuntimeError, match="second time"):
        mg.grad(y, x)
    z = (x.tanh() * 2.0).sum()
    a = mg.grad(z, x, retain_graph=True)[0].numpy()
    b = mg.grad(z, x)[0].numpy()
    assert_close(a, b)


def test_grad_of_an_input_without_requires_grad_raises():
    x = leaf([1.0])
    c = Tensor(np.array([2.0]))
    with pytest.raises(RuntimeError, match="does not require grad"):
        mg.grad((x * c).sum(), [x, c])


# ------------------------------------------------------------------ create_graph: second derivatives

def test_second_derivative_of_cube():
    x = leaf([-1.5, 0.5, 2.0])
    (g,) = mg.grad((x ** 3).sum(), x, create_graph=True)
    assert_close(g, 3 * x.numpy() ** 2)
    (h,) = mg.grad(g.sum(), x)
    assert_close(h, 6 * x.numpy())


def test_second_derivative_of_tanh_through_backward_create_graph():
    x = leaf([-1.0, 0.3, 2.0])
    x.tanh().sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad, "with create_graph the .grad is itself differentiable"
    t = np.tanh(x.numpy())
    assert_close(g, 1 - t ** 2)
    (h,) = mg.grad(g.sum(), x)
    assert_close(h, -2 * t * (1 - t ** 2))


def _mlp(params, x):
    w1, b1, w2, b2 = params
    h = mg.nn.functional.gelu(x @ w1 + b1)
    return (mg.nn.functional.tanh(h @ w2 + b2) ** 2).sum()


def test_hessian_vector_product_of_a_small_mlp_matches_finite_differences():
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (4,), (4, 2), (2,)]
    values = [rng.standard_normal(s) for s in shapes]
    vs = [rng.standard_normal(s) for s in shapes]
    x = Tensor(rng.standard_normal((5, 3)))

    def grads_at(vals):
        ps = [Tensor(v, requires_grad=True) for v in vals]
        return [g.numpy() for g in mg.grad(_mlp(ps, x), ps)]

    ps = [Tensor(v, requires_grad=True) for v in values]
    gs = mg.grad(_mlp(ps, x), ps, create_graph=True)
    gv = sum((g * Tensor(v)).sum() for g, v in zip(gs, vs))
    hvp = mg.grad(gv, ps)
    eps = 1e-5   # central difference of the gradient along v: error O(eps^2) + O(eps64/eps)
    plus = grads_at([p + eps * v for p, v in zip(values, vs)])
    minus = grads_at([p - eps * v for p, v in zip(values, vs)])
    for h, gp, gm in zip(hvp, plus, minus):
        np.testing.assert_allclose(h.numpy(), (gp - gm) / (2 * eps), rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ no_grad

def test_no_grad_context_and_decorator():
    x = leaf([1.0, 2.0])
    with mg.no_grad():
        assert not mg.is_grad_enabled()
        y = x * 2.0
        with mg.enable_grad():
            z = x * 2.0
    assert mg.is_grad_enabled()
    assert not y.requires_grad and z.requires_grad

    @mg.no_grad()
    def f(t):
        return t.exp()
    assert not f(x).requires_grad
    assert mg.is_grad_enabled()
    with pytest.raises(RuntimeError, match="does not require grad"):
        f(x).sum().backward()


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError), mg.no_grad():
        1 / 0
    assert mg.is_grad_enabled()


# ------------------------------------------------------------------ detect_anomaly

def _line_of(marker):
    with open(__file__) as f:
        for i, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return i
    raise AssertionError(marker)


def test_detect_anomaly_names_the_op_and_user_line_in_forward():
    x = leaf([1.0, -1.0])
    with mg.detect_anomaly(), pytest.raises(AnomalyError) as e:
        x.log()  # ANOMALY-FORWARD
    msg = str(e.value)
    assert "Log" in msg and "forward" in msg
    assert f'{os.path.basename(__file__)}", line {_line_of("# ANOMALY-FORWARD")}' in msg


def test_detect_anomaly_names_the_op_and_user_line_in_backward():
    x = leaf([0.0, 4.0])
    with mg.detect_anomaly():
        y = x.sqrt()  # ANOMALY-BACKWARD
        loss = y.sum()
        with pytest.raises(AnomalyError) as e:
            loss.backward()
    msg = str(e.value)
    assert msg.startswith("Sqrt produced NaN/Inf in its backward"), msg
    assert f'{os.path.basename(__file__)}", line {_line_of("# ANOMALY-BACKWARD")}' in msg


def test_without_detect_anomaly_nan_passes_silently():
    x = leaf([-1.0])
    with np.errstate(invalid="ignore"):
        assert np.isnan(x.log().numpy()).all()


# ------------------------------------------------------------------ gradient accumulation

def test_gradient_accumulation_over_micro_batches_then_zero_grad_leaves_nothing_stale():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(4, 8, dtype=np.float64, rng=rng), nn.ReLU(),
                          nn.Linear(8, 1, dtype=np.float64, rng=rng))
    x, t = rng.standard_normal((6, 4)), rng.standard_normal((6, 1))

    def loss_of(xs, ts):
        return nn.functional.mse_loss(model(Tensor(xs)), Tensor(ts), reduction="sum")

    loss_of(x, t).backward()
    full = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    for i in range(0, 6, 2):   # three micro-batches accumulate to the full-batch gradient
        loss_of(x[i:i + 2], t[i:i + 2]).backward()
    for p, g in zip(model.parameters(), full):
        assert_close(p.grad, g, ulps=256)
    opt = mg.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss_of(x[:2], t[:2]).backward()      # a fresh step sees only its own batch
    fresh = [p.grad.numpy().copy() for p in model.parameters()]
    model.zero_grad()
    loss_of(x[:2], t[:2]).backward()
    for p, g in zip(model.parameters(), fresh):
        assert_close(p.grad, g)


def test_grad_buffer_is_not_aliased_between_leaves():
    # the first gradient a leaf receives may be the upstream array itself; later in-place
    # accumulation must not leak into another leaf's .grad
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()
    a.sum().backward()
    assert_close(a.grad, [2.0, 2.0])
    assert_close(b.grad, [1.0, 1.0])


def test_gradcheck_of_math_identity_composition():
    # d/dx of log(sigmoid(x)) is 1 - sigmoid(x); a chain of several ops in one check
    x = leaf([-3.0, 0.1, 4.0])
    (g,) = mg.grad(mg.nn.functional.sigmoid(x).log().sum(), x)
    assert_close(g, 1 - 1 / (1 + np.exp(-x.numpy())))
    assert math.isfinite(float(g.numpy().sum()))


def test_create_graph_grads_are_not_shared_and_accept_a_later_first_order_backward():
    # (a + b) hands the same upstream gradient (a read-only broadcast view) to both leaves
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward(create_graph=True)
    assert a.grad is not b.grad
    a.sum().backward()
    assert_close(a.grad, [2.0, 2.0])
    assert_close(b.grad, [1.0, 1.0])
    # two create_graph backwards accumulate differentiably: d/dx of (2 * 3x^2) is 12x
    x = leaf([1.0, -2.0])
    (x ** 3).sum().backward(create_graph=True)
    (x ** 3).sum().backward(create_graph=True)
    (h,) = mg.grad(x.grad.sum(), x)
    assert_close(h, 12 * x.numpy())


def test_casting_to_an_integer_dtype_cuts_the_graph():
    x = leaf([1.7, -2.2])
    i = x.astype(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad and i.numpy().tolist() == [1, -2]
    (x.astype(np.float32) * 2.0).sum().backward()   # a float cast stays differentiable
    assert_close(x.grad, [2.0, 2.0])


def test_slice_gradients_of_one_tensor_accumulate_into_one_dense_grad():
    """Pieces of one tensor (as q, k, v of a fused projection) get first-order SliceGrads that
    the engine adds into one buffer; the result equals the dense computation."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4, 5))
    w = rng.standard_normal((3, 4, 5))
    x = mg.Tensor(a.copy(), requires_grad=True)
    q, k, v = x[0], x[1], x[2]
    loss = (q * w[0]).sum() + (k * k * w[1]).sum() + (v.exp() * w[2]).sum() + (x[0, 1:] * 3.0).sum()
    loss.backward()
    want = np.stack([w[0], 2 * a[1] * w[1], np.exp(a[2]) * w[2]])
    want[0, 1:] += 3.0
    assert np.allclose(x.grad.numpy(), want, rtol=1e-12, atol=1e-12)
    x.grad = None
    x[1].sum().backward()                                # a lone slice: .grad is a dense, writable array
    g = x.grad.numpy()
    assert g.shape == (3, 4, 5) and g[1].sum() == 20 and g[0].sum() == 0 and g[2].sum() == 0
    (gx,) = mg.grad((x[2] * 2.0).sum(), [x])
    assert gx.shape == (3, 4, 5) and float(gx.numpy()[2].sum()) == 40.0
