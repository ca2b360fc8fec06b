"""Issue 17's math ops: the regressions it lists ("wrong values and errors"), the forward-only
registry (minigrad.opinfo.OPS_MATH_NOGRAD: indices, booleans, integer arithmetic), and semantics
the registry cannot express (sign rules, promotion, ties and NaN order, zeros in products,
stability at extreme values, loss conventions). The differentiable ops are in OPS (OPS_MATH) and
go through tests/test_ops.py, tests/test_shapes_hypothesis.py and the strict-backend sweep."""
import math

import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
import minigrad.nn.functional as F
from minigrad import Tensor
from minigrad.opinfo import OPS, OPS_MATH, OPS_MATH_NOGRAD

NOGRAD_IDS = [op.name for op in OPS_MATH_NOGRAD]


def t64(values, grad=True):
    return Tensor(np.asarray(values, np.float64), requires_grad=grad)


def grads_of(fn, *xs):
    out = fn(*xs)
    out.backward(Tensor(np.ones(out.shape, out.dtype)))
    return [x.grad.numpy() for x in xs]


# ================================================================== the issue's list of ops

ISSUE_17 = {
    "scans and order": ["cumsum", "cumprod", "sort", "argsort", "topk", "argmin", "argmax"],
    "reductions": ["prod", "any", "all", "std", "norm", "logcumsumexp"],
    "unary": ["sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
              "log2", "log10", "log1p", "exp2", "expm1", "reciprocal", "rsqrt", "square", "sign", "floor", "ceil",
              "round", "trunc", "erf", "erfc"],
    "integer": ["floor_divide", "remainder", "fmod", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
                "left_shift", "right_shift", "isclose", "isnan", "isinf", "isfinite"],
}
ACTIVATIONS = ["softplus", "silu", "mish", "leaky_relu", "elu", "selu", "celu", "hardtanh", "relu6", "hardsigmoid",
               "hardswish", "logsigmoid", "softsign", "glu"]
LOSSES = ["nll_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "l1_loss", "smooth_l1_loss",
          "huber_loss", "kl_div", "cross_entropy"]


@pytest.mark.parametrize("group", sorted(ISSUE_17))
def test_every_listed_op_is_a_module_function_and_has_a_registry_entry(group):
    names = {op.name for op in OPS} | {op.name for op in OPS_MATH_NOGRAD}
    for name in ISSUE_17[group]:
        assert callable(getattr(mg, name)), f"minigrad.{name} is missing"
        if name != "atan2":
            assert callable(getattr(Tensor, name)), f"Tensor.{name} is missing"
        assert any(n == name or n.startswith(name + "_") for n in names), f"no registry entry for {name}"


def test_every_listed_activation_and_loss_is_in_functional_and_the_registry():
    names = {op.name for op in OPS}
    for name in ACTIVATIONS + LOSSES:
        assert callable(getattr(F, name)), f"nn.functional.{name} is missing"
        assert any(n == name or n.startswith(name + "_") for n in names), f"no registry entry for {name}"


def test_registry_names_are_unique_across_both_lists():
    names = [op.name for op in OPS] + NOGRAD_IDS
    assert len(names) == len(set(names))
    assert all(op in OPS for op in OPS_MATH)


# ================================================================== wrong values and errors (regressions)

def test_min_of_integers_and_bools_is_exact():
    assert Tensor(np.array([0, -2 ** 31], np.int32)).min().item() == -2 ** 31     # was 0: -x wrapped
    u = Tensor(np.arange(6, dtype=np.uint8))
    assert u.min().item() == 0 and u.min().dtype == np.uint8                       # was 1
    b = Tensor(np.array([[True, False], [True, True]]))
    assert b.min().item() is False and b.min(axis=1).numpy().tolist() == [False, True]   # raised
    assert b.max(axis=0).numpy().tolist() == [True, True]


def test_pow_gradient_at_a_zero_base_is_pytorchs():
    a, b = t64([0.0, 0.0, 0.0]), t64([0.0, 0.3, 2.0])
    with np.errstate(divide="ignore", invalid="ignore"):          # 0^-0.7 = inf, as intended
        ga, gb = grads_of(lambda a, b: a ** b, a, b)
    # PyTorch 2.13: a.grad [0, inf, 0], b.grad [0, 0, 0] (minigrad gave [nan, inf, 0], [-inf, nan, nan])
    assert ga.tolist() == [0.0, math.inf, 0.0] and gb.tolist() == [0.0, 0.0, 0.0]
    base, x = t64([0.0] * 4), t64([-1.0, 0.0, 1.0, 2.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        gbase, gx = grads_of(lambda a, b: a ** b, base, x)
    assert gx.tolist() == [-math.inf, 0.0, 0.0, 0.0]               # PyTorch's; was [-inf, -inf, nan, nan]
    assert gbase.tolist() == [-math.inf, 0.0, 1.0, 0.0]            # d/da a^b = b·a^(b-1): 1·0^0 = 1


def test_pow_gradient_elsewhere_is_unchanged_and_second_order_holds():
    a, b = t64([0.5, 2.0, 1.3]), t64([0.0, -1.5, 2.2])
    ga, gb = grads_of(lambda a, b: a ** b, a, b)
    av, bv = a.numpy(), b.numpy()
    assert_close(ga, bv * av ** (bv - 1))
    assert_close(gb, av ** bv * np.log(av))
    assert mg.gradgradcheck(lambda a, b: a ** b, [a, b])


@pytest.mark.parametrize("values", [[1.0, 2.0], [3.0, 3.0], [1.0]])
@pytest.mark.parametrize("extra", [0, 1])
def test_var_and_std_with_ddof_at_or_past_the_count_follow_numpy(values, extra):
    a = np.array(values)
    ddof = a.size + extra
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want_var, want_std = np.var(a, ddof=ddof), np.std(a, ddof=ddof)
    x = Tensor(a)
    with np.errstate(invalid="ignore"):                          # 0·inf = NaN, as intended
        got_var, got_std = x.var(ddof=ddof).item(), x.std(ddof=ddof).item()
    # inf for a nonzero spread (was NaN), NaN for 0/0, as NumPy and PyTorch
    assert (got_var == want_var) or (math.isnan(got_var) and math.isnan(want_var))
    assert (got_std == want_std) or (math.isnan(got_std) and math.isnan(want_std))


@pytest.mark.parametrize("axis", [0, -1])
def test_axis_0_and_minus_1_on_a_0d_tensor_act_on_its_one_element(axis):
    x = Tensor(np.array(1.5), requires_grad=True)
    cases = {"sum": (x.sum(axis), 1.5), "mean": (x.mean(axis), 1.5), "max": (x.max(axis), 1.5),
             "min": (x.min(axis), 1.5), "prod": (x.prod(axis), 1.5), "logsumexp": (F.logsumexp(x, axis), 1.5),
             "softmax": (F.softmax(x, axis), 1.0), "log_softmax": (F.log_softmax(x, axis), 0.0),
             "squeeze": (x.squeeze(axis), 1.5), "cumsum": (x.cumsum(axis), 1.5),
             "logcumsumexp": (x.logcumsumexp(axis), 1.5), "sort": (x.sort(axis).values, 1.5),
             "argmax": (x.argmax(axis), 0), "argsort": (x.argsort(axis), 0), "std": (x.std(axis), 0.0)}
    for name, (y, want) in cases.items():
        assert y.shape == () and y.item() == want, f"{name}: {y}"
    (g,) = mg.grad(x.sum(axis) + F.softmax(x, axis) + x.cumsum(axis), [x])
    assert g.item() == 2.0                       # d sum = 1, d softmax = 0, d cumsum = 1


@pytest.mark.parametrize("make", [lambda x: x.sum(1), lambda x: F.softmax(x, 1), lambda x: x.squeeze(-2),
                                  lambda x: F.logsumexp(x, 1), lambda x: x.cumsum(1), lambda x: x.argmax(1)])
def test_other_axes_on_a_0d_tensor_are_index_errors(make):
    with pytest.raises(IndexError, match="axis"):
        make(Tensor(np.array(1.0)))


def test_where_takes_two_python_scalars():
    cond = np.array([True, False, True])
    y = mg.where(cond, 4, 2)                                   # raised TypeError
    assert y.numpy().tolist() == [4, 2, 4] and y.dtype == np.int64
    assert mg.where(Tensor(cond), 4.0, 2).dtype == np.float32
    z = mg.where(cond, 4, 2.5)
    assert z.dtype == np.float32 and z.numpy().tolist() == [4.0, 2.5, 4.0]


def test_integer_and_float_promotion_gives_float32():
    i = Tensor(np.array([1, 2, 3]))                            # int64
    for y, want in [(i * 2.5, [2.5, 5.0, 7.5]), (2.5 * i, [2.5, 5.0, 7.5]), (i + 0.5, [1.5, 2.5, 3.5]),
                    (i / Tensor(np.array([2, 2, 2])), [0.5, 1.0, 1.5]), (i / 2, [0.5, 1.0, 1.5]),
                    (1 / i, [1.0, 0.5, 1 / 3]), (i ** 0.5, np.sqrt([1, 2, 3])),
                    (i + Tensor(np.ones(3, np.float32)), [2.0, 3.0, 4.0]), (i.exp(), np.exp([1, 2, 3])),
                    (i.sin(), np.sin([1, 2, 3])), (mg.atan2(i, 2), np.arctan2([1, 2, 3], 2))]:
        assert y.dtype == np.float32, y
        assert_close(y, np.asarray(want, np.float32), np.float32)
    assert (Tensor(np.array([1, 2], np.int32)) + 3).dtype == np.int32    # a Python int keeps the int dtype
    assert (i // 2).dtype == np.int64 and (i % 2).dtype == np.int64
    assert (Tensor(np.array([True, False])) + 1.5).dtype == np.float32
    assert (Tensor(np.ones(2)) + i[:2]).dtype == np.float64               # a float tensor keeps its dtype
    assert (Tensor(np.ones(2, np.float32)) * Tensor(np.ones(2))).dtype == np.float64   # floats widen (NumPy)


def test_separated_index_arrays_follow_numpys_placement():
    """x[0, :, idx]: NumPy puts the broadcast index dimension first, (len(idx), 3); PyTorch
    would give (3, len(idx)). minigrad keeps NumPy's rule (README, "Conventions worth knowing")."""
    a = np.arange(24.0).reshape(2, 3, 4)
    idx = np.array([3, 0, 3, 1, 2])
    x = Tensor(a.copy(), requires_grad=True)
    y = x[0, :, idx]
    assert y.shape == a[0, :, idx].shape == (5, 3)
    assert_close(y, a[0, :, idx])
    w = np.random.default_rng(0).standard_normal((5, 3))
    (y * Tensor(w)).sum().backward()
    want = np.zeros_like(a)
    np.add.at(want, (0, slice(None), idx), w)                 # the repeated index 3 accumulates
    assert_close(x.grad, want)


@pytest.mark.parametrize("make", [
    lambda: Tensor(np.ones((2, 3))).sum(axis=2), lambda: Tensor(np.ones((2, 3))).transpose(0, 5),
    lambda: Tensor(np.ones((2, 3))).swapaxes(-3, 0), lambda: F.softmax(Tensor(np.ones((2, 3))), 2),
    lambda: mg.concatenate([Tensor(np.ones(2))], axis=1), lambda: Tensor(np.ones((2, 3))).cumsum(2),
    lambda: Tensor(np.ones((2, 3))).argmax(-3), lambda: Tensor(np.ones((2, 3))).sort(2)])
def test_bad_axes_are_index_errors_as_in_numpy(make):
    with pytest.raises(IndexError, match="axis") as e:
        make()
    assert isinstance(e.value, mg.AxisError) and isinstance(e.value, ValueError)   # NumPy's AxisError is both


def test_shape_errors_stay_value_errors_and_clip_needs_a_bound():
    with pytest.raises(ValueError, match="transpose") as e:
        Tensor(np.ones((2, 3))).transpose(0, 0)                 # a bad permutation: NumPy's ValueError
    assert not isinstance(e.value, IndexError)
    with pytest.raises(ValueError, match="matmul") as e:
        Tensor(np.array(2.0)) @ Tensor(np.array(3.0))
    assert not isinstance(e.value, IndexError)
    with pytest.raises(ValueError, match="clip: at least one of min and max"):
        Tensor(np.ones(2)).clip()
    assert Tensor(np.array([-2.0, 2.0])).clip(None, 1.0).numpy().tolist() == [-2.0, 1.0]


# ================================================================== the forward-only registry

def _arrays(op, dtype, seed=0):
    return op.inputs(np.random.default_rng(seed), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", OPS_MATH_NOGRAD, ids=NOGRAD_IDS)
def test_nograd_op_matches_numpy_exactly_and_carries_no_grad(op, dtype):
    arrays = _arrays(op, dtype)
    ts = [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    out = op.fn(*ts)
    want = np.asarray(op.ref(*arrays))
    assert out.shape == want.shape and out.dtype == want.dtype, f"{op.name}: {out.dtype}{out.shape}"
    assert np.array_equal(out.numpy(), want), op.name
    assert not out.requires_grad and out.is_leaf, f"{op.name}: an index/boolean/integer result carries no grad"


@pytest.mark.parametrize("op", OPS_MATH_NOGRAD, ids=NOGRAD_IDS)
def test_nograd_op_runs_on_the_strict_backend(op, strict_backend):
    from minigrad.strict import StrictArray
    arrays = _arrays(op, np.float64, seed=1)
    ts = [Tensor(a.copy()) for a in arrays]
    assert all(isinstance(t.data, StrictArray) for t in ts)
    out = op.fn(*ts)
    assert isinstance(out.data, StrictArray), f"{op.name} returned a {type(out.data).__name__}"
    assert np.array_equal(out.numpy(), op.ref(*arrays))


# ================================================================== integer arithmetic: sign rules

@pytest.mark.parametrize("dtype", [np.int64, np.float64])
def test_remainder_takes_the_divisors_sign_and_fmod_the_dividends(dtype):
    a = Tensor(np.array([5, -5, 5, -5], dtype))
    b = Tensor(np.array([3, 3, -3, -3], dtype))
    pairs = [(5, 3), (-5, 3), (5, -3), (-5, -3)]
    assert (a % b).numpy().tolist() == [p % q for p, q in pairs] == [2, 1, -1, -2]           # Python's %
    assert mg.fmod(a, b).numpy().tolist() == [math.fmod(p, q) for p, q in pairs] == [2, -2, 2, -2]  # C's fmod
    assert (a // b).numpy().tolist() == [p // q for p, q in pairs] == [1, -2, -2, 1]         # floor
    assert (7 // b).numpy().tolist() == [2, 2, -3, -3] and (7 % b).numpy().tolist() == [1, 1, -2, -2]


def test_integer_division_by_zero_raises_and_float_division_follows_ieee():
    for f in (mg.floor_divide, mg.remainder, mg.fmod):
        with pytest.raises(ZeroDivisionError, match="integer division by zero"):
            f(Tensor(np.array([1, 2])), Tensor(np.array([1, 0])))
    with np.errstate(all="ignore"):
        got = mg.floor_divide(Tensor(np.array([1.0, -1.0])), 0.0).numpy()
        want = np.floor_divide(np.array([1.0, -1.0]), 0.0)
    assert got.tolist() == want.tolist() == [math.inf, -math.inf]


def test_remainder_and_fmod_gradients_are_pytorchs():
    a, b = t64([5.5, -5.5, 5.5, -5.5]), t64([3.0, 3.0, -3.0, -3.0])
    ga, gb = grads_of(lambda a, b: a % b, a, b)
    assert ga.tolist() == [1.0] * 4 and gb.tolist() == (-np.floor(a.numpy() / b.numpy())).tolist()
    a.grad = b.grad = None
    ga, gb = grads_of(mg.fmod, a, b)
    assert ga.tolist() == [1.0] * 4 and gb.tolist() == (-np.trunc(a.numpy() / b.numpy())).tolist()


def test_bitwise_ops_refuse_floats_and_shifts_refuse_bools():
    with pytest.raises(TypeError, match="bitwise_and: needs integer or bool"):
        Tensor(np.ones(2)) & Tensor(np.ones(2))
    with pytest.raises(TypeError, match="bitwise_not"):
        ~Tensor(np.ones(2))
    with pytest.raises(TypeError, match="left_shift: needs integer"):
        Tensor(np.array([True])) << Tensor(np.array([1]))
    x = Tensor(np.array([-8, 5], np.int16))
    assert (x >> 1).numpy().tolist() == [-4, 2] and (x >> 1).dtype == np.int16          # arithmetic shift
    assert (1 << Tensor(np.array([0, 3]))).numpy().tolist() == [1, 8]
    assert (6 & Tensor(np.array([3, 5]))).numpy().tolist() == [2, 4]


# ================================================================== rounding

@pytest.mark.parametrize("name", ["floor", "ceil", "round", "trunc", "sign"])
def test_rounding_has_a_zero_gradient_not_none(name):
    x = t64([-1.7, -0.2, 0.4, 2.5])
    getattr(x, name)().sum().backward()
    assert x.grad is not None and x.grad.numpy().tolist() == [0.0] * 4


def test_round_is_half_to_even_and_integers_pass_unchanged():
    assert Tensor(np.array([0.5, 1.5, 2.5, -0.5, -1.5])).round().numpy().tolist() == [0.0, 2.0, 2.0, -0.0, -2.0]
    assert Tensor(np.array([1.234, -5.678])).round(2).numpy().tolist() == [1.23, -5.68]
    i = Tensor(np.array([-3, 4], np.int32))
    for name in ("floor", "ceil", "round", "trunc"):
        y = getattr(i, name)()
        assert y.dtype == np.int32 and y.numpy().tolist() == [-3, 4]
    assert i.sign().numpy().tolist() == [-1, 1]


# ================================================================== order

def test_sort_is_stable_and_puts_nan_where_pytorch_does():
    x = Tensor(np.array([2.0, np.nan, 1.0, 2.0, -np.inf, 1.0]))
    v, i = x.sort()
    assert i.numpy().tolist() == [4, 2, 5, 0, 3, 1]                  # ties keep their order; NaN last
    assert np.array_equal(v.numpy(), [-np.inf, 1, 1, 2, 2, np.nan], equal_nan=True)
    v, i = x.sort(descending=True)
    assert i.numpy().tolist() == [1, 0, 3, 2, 5, 4]                  # NaN first, ties still in order


def test_sort_and_topk_values_send_the_gradient_back_to_their_origin():
    x = t64([[0.3, -1.0, 2.0, 0.7]])
    w = np.array([[1.0, 10.0, 100.0, 1000.0]])
    (g,) = mg.grad((x.sort(axis=1).values * Tensor(w)).sum(), [x])
    assert g.numpy().tolist() == [[10.0, 1.0, 1000.0, 100.0]]        # sorted order: -1, 0.3, 0.7, 2
    (g,) = mg.grad((x.topk(2, axis=1).values * Tensor(w[:, :2])).sum(), [x])
    assert g.numpy().tolist() == [[0.0, 0.0, 1.0, 10.0]]
    res = mg.topk(x, 2, axis=1, largest=False)
    assert res.indices.numpy().tolist() == [[1, 0]] and res.values.numpy().tolist() == [[-1.0, 0.3]]


def test_topk_checks_k():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="topk: k=4 is out of range for an axis of size 3"):
        x.topk(4)
    assert x.topk(0).values.shape == (2, 0)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_and_argmin_on_every_axis(name):
    a = np.random.default_rng(0).integers(0, 4, (2, 3, 4)).astype(np.float64)     # many ties: the first wins
    x = Tensor(a)
    for axis in [None, 0, 1, 2, -1, -2, -3]:
        for keepdims in (False, True):
            got = getattr(x, name)(axis=axis, keepdims=keepdims)
            want = getattr(np, name)(a, axis=axis, keepdims=keepdims)
            assert got.dtype == want.dtype and np.array_equal(got.numpy(), want), (axis, keepdims)
    nan = Tensor(np.array([1.0, np.nan, 5.0]))
    assert getattr(nan, name)().item() == 1                         # NaN wins, as NumPy and PyTorch
    with pytest.raises(ValueError, match=f"{name}: .*empty"):
        getattr(Tensor(np.ones((2, 0))), name)(axis=1)


# ================================================================== products with zeros, scans

def test_prod_gradient_with_one_and_two_zeros():
    x = t64([[2.0, 0.0, 3.0], [0.0, 5.0, 0.0], [1.5, 2.0, 4.0]])
    (g,) = grads_of(lambda t: t.prod(axis=1), x)
    assert g.tolist() == [[0.0, 6.0, 0.0], [0.0, 0.0, 0.0], [8.0, 6.0, 3.0]]
    # the second derivative across the two zeros of row 1 is the product of the rest (5), not 0
    (g1,) = mg.grad(x.prod(axis=1).sum(), [x], create_graph=True)
    (h,) = mg.grad(g1[1, 0], [x])
    assert h.numpy()[1].tolist() == [0.0, 0.0, 5.0]


def test_cumprod_gradient_with_zeros_matches_the_polynomial():
    a = np.array([1.5, 0.0, 2.0, 0.0, -3.0])
    x = Tensor(a.copy(), requires_grad=True)
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    (g,) = mg.grad((x.cumprod() * Tensor(w)).sum(), [x])
    # d/dx_j sum_i w_i prod_{k<=i} x_k = sum_{i>=j} w_i prod_{k<=i, k!=j} x_k, by brute force
    want = [sum(w[i] * np.prod([a[k] for k in range(i + 1) if k != j]) for i in range(j, 5)) for j in range(5)]
    assert g.numpy().tolist() == want


def test_logcumsumexp_is_stable_at_extreme_values():
    for dtype in (np.float32, np.float64):
        a = np.array([-1000.0, 0.0, 1000.0, -np.inf, 999.0], dtype)
        x = Tensor(a, requires_grad=True)
        y = x.logcumsumexp()
        assert_close(y, np.logaddexp.accumulate(a.astype(np.float64)), dtype)
        y.backward(Tensor(np.array([1.0, -2.0, 0.5, 3.0, 1.0], dtype)))
        assert np.isfinite(x.grad.numpy()).all()
    x = Tensor(np.array([-np.inf, -np.inf]))
    assert x.logcumsumexp().numpy().tolist() == [-np.inf, -np.inf]


def test_erfc_keeps_relative_accuracy_in_the_tail():
    for dtype, x in ((np.float64, 10.0), (np.float32, 9.0)):
        got = Tensor(np.array([x], dtype)).erfc().numpy()[0]
        assert got > 0 and abs(got / math.erfc(x) - 1) < 8 * np.finfo(dtype).eps, (dtype, got)


def test_norm_values_and_a_zero_vector_gradient():
    a = np.random.default_rng(0).standard_normal((3, 4))
    x = Tensor(a)
    for p, want in [(1, np.abs(a).sum(1)), (2, np.sqrt((a * a).sum(1))), (math.inf, np.abs(a).max(1)),
                    (-math.inf, np.abs(a).min(1))]:
        assert_close(x.norm(p, axis=1), want, err_msg=f"p={p}")
    z = t64([0.0, 0.0])
    z.norm().backward()
    assert z.grad.numpy().tolist() == [0.0, 0.0]                       # not NaN (0/0), as PyTorch
    with pytest.raises(ValueError, match="norm: p must be"):
        x.norm(3)


def test_any_all_and_isclose_follow_numpy():
    a = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    x = Tensor(a)
    assert x.any(axis=1).numpy().tolist() == [True, False] and x.all().item() is False
    assert x.any(axis=(0, 1), keepdims=True).shape == (1, 1)
    p, q = np.array([1.0, np.nan, np.inf, 1e-9]), np.array([1.0 + 1e-6, np.nan, np.inf, 0.0])
    assert mg.isclose(Tensor(p), Tensor(q)).numpy().tolist() == np.isclose(p, q).tolist()
    assert Tensor(p).isclose(q, equal_nan=True).numpy().tolist() == [True, True, True, True]


# ================================================================== activations at extreme inputs

@pytest.mark.parametrize("name", ["softplus", "silu", "mish", "elu", "selu", "celu", "logsigmoid", "softsign",
                                  "leaky_relu", "hardswish", "hardsigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_stay_finite_at_huge_inputs(name, dtype):
    x = Tensor(np.array([-1e4, -100.0, 100.0, 1e4], dtype), requires_grad=True)
    y = getattr(F, name)(x)
    y.sum().backward()
    assert y.dtype == dtype and np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all(), name


def test_activation_conventions():
    x = t64([0.0, 30.0, -2.0])
    assert_close(F.softplus(x, beta=1.0, threshold=20.0), [math.log(2.0), 30.0, math.log1p(math.exp(-2.0))])
    assert_close(F.logsigmoid(t64([-50.0])), [-50.0 - math.log1p(math.exp(-50.0))])
    (g,) = grads_of(lambda t: F.leaky_relu(t, 0.1), t64([0.0, -1.0, 2.0]))
    assert g.tolist() == [0.1, 0.1, 1.0]                              # the slope at 0 is the negative one
    (g,) = grads_of(F.elu, t64([0.0]))
    assert g.tolist() == [1.0]
    with pytest.raises(ValueError, match="glu: .*odd size 3"):
        F.glu(Tensor(np.ones((2, 3))))


# ================================================================== losses

def _logp(x):
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_smoothed_cross_entropy_matches_its_definition(reduction):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5))                                 # (N, T, C): classes last
    t = rng.integers(0, 5, (2, 3))
    t[0, 1] = -1
    w = rng.uniform(0.5, 2.0, 5)
    eps = 0.3
    logp = _logp(x)
    q = (1 - eps) * np.eye(5)[np.where(t >= 0, t, 0)] + eps / 5
    per = -(w * q * logp).sum(-1) * (t >= 0)                           # per position, 0 where ignored
    want = {"none": per, "sum": per.sum(), "mean": per.sum() / w[t[t >= 0]].sum()}[reduction]
    got = F.cross_entropy(Tensor(x), t, weight=w, ignore_index=-1, reduction=reduction, label_smoothing=eps)
    assert_close(got, want)


def test_cross_entropy_probability_targets_and_the_all_ignored_mean():
    rng = np.random.default_rng(1)
    x, p = rng.standard_normal((4, 3)), rng.dirichlet(np.ones(3), 4)
    w = np.array([1.0, 2.0, 0.5])
    assert_close(F.cross_entropy(Tensor(x), Tensor(p), weight=w), -(w * p * _logp(x)).sum(-1).mean())
    assert_close(F.cross_entropy(Tensor(x), p, reduction="sum"), -(p * _logp(x)).sum())
    with pytest.raises(TypeError, match="class probabilities of shape"):
        F.cross_entropy(Tensor(x), p[:, :2])
    nan = F.cross_entropy(Tensor(x), np.full(4, -100), weight=w, label_smoothing=0.1)
    assert math.isnan(nan.item())


def test_nll_loss_is_cross_entropy_of_log_probabilities():
    rng = np.random.default_rng(2)
    x, t = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    w = rng.uniform(0.5, 2, 4)
    assert_close(F.nll_loss(F.log_softmax(Tensor(x)), t, weight=w), F.cross_entropy(Tensor(x), t, weight=w).numpy())
    assert_close(F.nll_loss(F.log_softmax(Tensor(x)), t), F.cross_entropy(Tensor(x), t).numpy())
    with pytest.raises(IndexError, match="target 4 is out of range for 4 classes"):
        F.nll_loss(Tensor(x), np.array([0, 1, 2, 3, 4, 0]))


def test_binary_cross_entropy_at_0_and_1_is_finite_with_pytorchs_clamp():
    p = Tensor(np.array([0.0, 1.0, 0.0, 1.0]), requires_grad=True)
    t = np.array([0.0, 1.0, 1.0, 0.0])
    loss = F.binary_cross_entropy(p, t, reduction="none")
    assert loss.numpy().tolist() == [0.0, 0.0, 100.0, 100.0]          # each log clamped at -100
    loss.sum().backward()
    g = p.grad.numpy()
    assert g.tolist() == [0.0, 0.0, -1e12, 1e12]                       # (p - t) / max(p(1-p), 1e-12)
    with pytest.raises(ValueError, match="probability in \\[0, 1\\]"):
        F.binary_cross_entropy(Tensor(np.array([1.5])), np.array([1.0]))


def test_binary_cross_entropy_with_logits_is_stable_and_weighs_positives():
    x = Tensor(np.array([[-800.0, 800.0, 0.3]]), requires_grad=True)
    t = np.array([[1.0, 0.0, 1.0]])
    pw = np.array([2.0, 1.0, 3.0])
    loss = F.binary_cross_entropy_with_logits(x, t, pos_weight=Tensor(pw), reduction="none")
    want = pw * t * np.logaddexp(0, -x.numpy()) + (1 - t) * np.logaddexp(0, x.numpy())
    assert_close(loss, want)
    loss.sum().backward()
    assert np.isfinite(x.grad.numpy()).all()
    unweighted = F.binary_cross_entropy_with_logits(Tensor(np.array([0.3])), np.array([1.0]))
    assert_close(unweighted, [math.log1p(math.exp(-0.3))][0])


def test_regression_losses_relations_and_kl_div_reductions():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 4)) * 2, rng.standard_normal((3, 4))
    x, y = Tensor(a), Tensor(b)
    assert_close(F.smooth_l1_loss(x, y, beta=0.0), np.abs(a - b).mean())
    assert_close(F.huber_loss(x, y, delta=0.7), 0.7 * F.smooth_l1_loss(x, y, beta=0.7).numpy())
    assert_close(F.l1_loss(x, b, reduction="sum"), np.abs(a - b).sum())
    logq, p = _logp(a), np.exp(_logp(b))
    p[0, 0] = 0.0                                                      # 0·log 0 counts as 0
    pointwise = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - logq), 0.0)
    for reduction, want in [("batchmean", pointwise.sum() / 3), ("mean", pointwise.mean()),
                            ("sum", pointwise.sum()), ("none", pointwise)]:
        assert_close(F.kl_div(Tensor(logq), p, reduction=reduction), want, err_msg=reduction)
    with pytest.raises(ValueError, match="kl_div: reduction must be"):
        F.kl_div(Tensor(logq), p, reduction="avg")
