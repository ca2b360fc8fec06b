"""Every op in the registry (minigrad.opinfo.OPS): forward vs its NumPy reference in float64 and
float32, gradcheck and gradgradcheck in float64 at float64's own tolerances. Plus op semantics the
registry cannot express (ties, scalar dtypes, scatter-add of repeated indices)."""
import numpy as np
import pytest
from conftest import assert_close, tol

import minigrad as mg
from minigrad import Tensor, sweep
from minigrad.autograd import Function
from minigrad.backend import get_array_module
from minigrad.gradient_check import _first_order
from minigrad.opinfo import BY_NAME, OPS, OpInfo

IDS = [op.name for op in OPS]


def _tensors(arrays, requires_grad=True):
    return [Tensor(a.copy(), requires_grad=requires_grad and a.dtype.kind == "f") for a in arrays]


def test_registry_names_are_unique_and_cover_the_contract():
    assert len(IDS) == len(set(IDS))
    # the ops issue 2 names must each have at least one registry entry
    for name in ["add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "tanh", "abs", "clip", "sum",
                 "mean_axes", "max_axis", "min", "var", "reshape", "transpose", "swapaxes", "squeeze",
                 "expand_dims", "broadcast_to", "getitem_slice", "getitem_repeat", "maximum", "minimum", "where",
                 "concatenate", "stack", "split", "matmul_2d", "matmul_1d_1d", "matmul_batched_broadcast",
                 "relu", "gelu", "gelu_tanh", "sigmoid", "softmax", "log_softmax", "logsumexp", "cross_entropy",
                 "mse_loss", "layer_norm", "embedding", "sdpa", "sdpa_causal_padded"]:
        assert name in IDS, f"the op registry has no entry {name!r}"


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_forward_float64_matches_numpy(op):
    arrays = op.inputs(np.random.default_rng(0), np.float64)
    out = op.fn(*_tensors(arrays))
    assert out.dtype == np.float64, f"{op.name}: float64 inputs gave a {out.dtype} result"
    assert_close(out, op.ref(*arrays), np.float64, err_msg=op.name)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_forward_float32_matches_numpy(op):
    arrays = op.inputs(np.random.default_rng(0), np.float32)
    out = op.fn(*_tensors(arrays))
    # float32 in, float32 out: no silent upcast (Python scalars inside ops take the tensor's dtype)
    assert out.dtype == np.float32, f"{op.name}: float32 inputs gave a {out.dtype} result"
    want = op.ref(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays])
    assert_close(out, want, np.float32, err_msg=op.name)


# float64's own tolerances (OpInfo.tolerances: gradient_check.float64_tolerances with the op's bound on
# the third derivative; about 2e-9 for outputs of order one), not the public gradcheck's defaults
# (PyTorch's atol 1e-5, rtol 1e-3), which a derivative off in its fifth digit passes
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_gradcheck(op):
    ts = _tensors(op.inputs(np.random.default_rng(1), np.float64))
    assert mg.gradcheck(op.fn, ts, **op.tolerances(ts))


@pytest.mark.parametrize("op", [o for o in OPS if o.second_order], ids=[o.name for o in OPS if o.second_order])
def test_gradgradcheck(op):
    ts = _tensors(op.inputs(np.random.default_rng(2), np.float64))
    assert mg.gradgradcheck(op.fn, ts, **op.tolerances(ts, order=2))


class ExpFifthDigit(Function):
    """exp with its derivative 1e-5 too large (relative): off in the fifth digit."""

    def forward(self, x):
        self.out = get_array_module(x).exp(x)
        return self.out

    def backward(self, g):
        return (g * Tensor._make(self.out) * 1.00001,)


def test_a_derivative_off_in_its_fifth_digit_fails_the_registry_gradcheck_and_the_sweep():
    op = OpInfo("exp_fifth_digit", ExpFifthDigit.apply, np.exp, ((3, 4),))
    ts = _tensors(op.inputs(np.random.default_rng(1), np.float64))
    assert mg.gradcheck(op.fn, ts)             # PyTorch's defaults: rtol 1e-3 lets it through
    with pytest.raises(mg.GradcheckError, match="Jacobian mismatch"):
        mg.gradcheck(op.fn, ts, **op.tolerances(ts))
    ok, msg, _, _ = sweep.check_op(op)         # `minigrad gradcheck`
    assert not ok and "Jacobian mismatch" in msg


def _third_derivatives(f, arrays, j, h):
    """max |d3 f_k / dx_j,e^3| over outputs k and elements e of input j: the central third difference
    (f(x+2h) - 2 f(x+h) + 2 f(x-h) - f(x-2h)) / 2h^3."""
    worst = 0.0
    for e in range(arrays[j].size):
        vals = []
        for step in (2, 1, -1, -2):
            args = [a.copy() for a in arrays]
            args[j].reshape(-1)[e] += step * h
            vals.append(np.concatenate([o.numpy().reshape(-1) for o in f(*_tensors(args))]))
        worst = max(worst, float(np.abs(vals[0] - 2 * vals[1] + 2 * vals[2] - vals[3]).max()) / (2 * h ** 3))
    return worst


def test_binary_cross_entropy_third_derivative_bounds_hold_at_the_sweep_samples():
    """The bounds its registry entry states (its first-order gradient's third derivative reaches 7.6e4 |v|
    near p = 0.05: the default 1e3 does not bound it) hold where `minigrad gradcheck` samples (seed 0)."""
    op = BY_NAME["binary_cross_entropy"]
    arrays = op.inputs(np.random.default_rng(0), np.float64)
    ts = _tensors(arrays)
    first_order, args = _first_order(op.fn, ts, None, 0)
    m3 = [max(_third_derivatives(lambda *a: (op.fn(*a),), arrays, j, 2e-4) for j in range(2)),
          max(_third_derivatives(lambda *a: first_order(*a), [a.numpy() for a in args], j, 2e-4) for j in range(3))]
    assert m3[0] <= op.third_derivative[0] and m3[1] <= op.third_derivative[1], (m3, op.third_derivative)
    assert m3[1] > 1e3, m3          # the stated bound is needed at these samples


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_backward_grads_have_input_shapes_and_dtypes(op):
    for dtype in (np.float32, np.float64):
        ts = _tensors(op.inputs(np.random.default_rng(3), dtype))
        op.fn(*ts).sum().backward()
        for t in ts:
            if t.requires_grad:
                assert t.grad is not None, f"{op.name}: an input got no gradient"
                assert t.grad.shape == t.shape and t.grad.dtype == t.dtype, \
                    f"{op.name}: grad {t.grad.shape}/{t.grad.dtype} for input {t.shape}/{t.dtype}"


# ------------------------------------------------------------------ semantics beyond the registry

def test_repeated_indices_accumulate_in_backward():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[np.array([1, 1, 3, 1])].sum().backward()
    assert x.grad.numpy().tolist() == [0.0, 3.0, 0.0, 1.0]


def test_integer_tensor_index_and_boolean_mask():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    idx = Tensor(np.array([2, 0]))
    assert idx.dtype.kind == "i" and not idx.requires_grad
    y = x[:, idx]
    assert y.numpy().tolist() == [[2.0, 0.0], [5.0, 3.0]]
    (y * Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]))).sum().backward()
    assert x.grad.numpy().tolist() == [[2.0, 0.0, 1.0], [4.0, 0.0, 3.0]]
    x.grad = None
    mask = x.numpy() > 2.5
    x[mask].sum().backward()
    assert x.grad.numpy().tolist() == mask.astype(float).tolist()


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_tied_extrema_share_the_gradient_evenly(reduce):
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    getattr(x, reduce)(axis=1).sum().backward()
    want = [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]] if reduce == "max" else [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert x.grad.numpy().tolist() == want


def test_maximum_tie_splits_the_gradient():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([1.0, 0.0]), requires_grad=True)
    mg.maximum(a, b).sum().backward()
    assert a.grad.numpy().tolist() == [0.5, 1.0] and b.grad.numpy().tolist() == [0.5, 0.0]


def test_python_scalars_keep_the_tensor_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    for y in (x * 2.0, 2.0 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x ** 2, -x, x.clip(0.0, 0.5)):
        assert y.dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32          # Python floats default to float32
    assert Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.ones(2)).dtype == np.float64          # arrays keep their dtype


def test_unary_minus_and_rsub_rdiv_rpow_gradients():
    x = Tensor(np.array([0.5, 2.0]), requires_grad=True)
    y = (-x) + (1.0 - x) + (2.0 / x) + (2.0 ** x)
    y.sum().backward()
    xv = np.array([0.5, 2.0])
    assert_close(x.grad, -1 - 1 - 2.0 / xv ** 2 + np.log(2.0) * 2.0 ** xv)


def test_std_argmax_and_ddof():
    a = np.random.default_rng(0).standard_normal((4, 5))
    x = Tensor(a)
    assert_close(x.var(axis=1, ddof=1), a.var(axis=1, ddof=1))
    assert_close(x.std(axis=0, keepdims=True), a.std(axis=0, keepdims=True))
    assert x.argmax(axis=1).numpy().tolist() == a.argmax(axis=1).tolist()


def test_split_into_equal_sections_and_its_gradient():
    x = Tensor(np.arange(6.0), requires_grad=True)
    parts = mg.split(x, 3)
    assert [p.numpy().tolist() for p in parts] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    (parts[0] * 1.0 + parts[2] * 3.0).sum().backward()
    assert x.grad.numpy().tolist() == [1.0, 1.0, 0.0, 0.0, 3.0, 3.0]


def test_astype_is_differentiable_and_casts_the_grad_back():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = x.astype(np.float64) * Tensor(np.array([3.0, 4.0]))
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.numpy().tolist() == [3.0, 4.0]


def test_numerically_stable_softmax_family_on_huge_logits():
    F = mg.nn.functional
    x = Tensor(np.array([[1000.0, 0.0, -1000.0]]), requires_grad=True)
    assert np.isfinite(F.softmax(x).numpy()).all()
    assert_close(F.log_softmax(x), [[0.0, -1000.0, -2000.0]])
    assert_close(F.logsumexp(x, axis=1), [1000.0])
    loss = F.cross_entropy(x, np.array([2]))
    assert_close(loss, 2000.0)
    loss.backward()
    assert_close(x.grad, [[1.0, 0.0, -1.0]])


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_float32_gradients_match_float64_gradients(op):
    """Backward in float32 stays float32-accurate: compared with the float64 gradients of the same
    (float32-representable) inputs, at a float32-derived tolerance."""
    arrays = op.inputs(np.random.default_rng(4), np.float32)
    go = np.random.default_rng(5).standard_normal(op.fn(*_tensors(arrays, False)).shape)
    grads = {}
    for dtype in (np.float32, np.float64):
        ts = _tensors([a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays])
        op.fn(*ts).backward(Tensor(go.astype(dtype)))
        grads[dtype] = [t.grad.numpy() for t in ts if t.requires_grad]
    for i, (g32, g64) in enumerate(zip(grads[np.float32], grads[np.float64])):
        assert g32.dtype == np.float32
        scale = max(1.0, float(np.abs(g64).max()))      # absolute error relative to the gradient's size
        np.testing.assert_allclose(g32, g64, rtol=256 * np.finfo(np.float32).eps,
                                   atol=256 * np.finfo(np.float32).eps * scale, err_msg=f"{op.name} input {i}")


def test_tensor_basics():
    x = Tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert (x.shape, x.ndim, x.dtype, x.device, x.requires_grad, x.grad) == ((2, 2), 2, np.float32, "cpu", True, None)
    host = x.numpy()
    host[0, 0] = 100.0                       # numpy() is a copy
    assert x.numpy()[0, 0] == 1.0
    assert x[1, 0].item() == 3.0 and isinstance(x[1, 0].item(), float)
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert x.to("cpu") is x and x.astype(np.float32) is x
    assert Tensor(x, dtype=np.float64).dtype == np.float64
    d = x.detach()
    assert not d.requires_grad and d.grad is None and np.array_equal(d.numpy(), x.numpy())
    assert mg.zeros(2, 3).shape == (2, 3) and mg.ones((2,), dtype=np.float64).dtype == np.float64
    assert mg.tensor([1, 2]).dtype == np.int64
    s = Tensor(np.array(2.0), requires_grad=True)
    s.backward()                             # backward on a scalar leaf: d s / d s = 1
    assert s.grad.item() == 1.0


@pytest.mark.parametrize("idx_shape, trailing", [((7,), (3,)), ((4, 5), (2, 3)), ((2,), ()), ((3, 3), (1,))])
def test_scatter_add_rows_matches_add_at(idx_shape, trailing):
    """The embedding backward's sorted reduceat equals np.add.at, repeated and negative indices included."""
    from minigrad.ops.shape import scatter_add_sorted
    rng = np.random.default_rng(len(idx_shape) + len(trailing))
    n = 4
    idx = rng.integers(-n, n, idx_shape)
    vals = rng.standard_normal(idx_shape + trailing)
    want = rng.standard_normal((n,) + trailing)
    got = want.copy()
    np.add.at(want, idx, vals)
    scatter_add_sorted(got, idx, vals)
    rtol, atol = tol(np.float64, ulps=8 * idx.size)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
