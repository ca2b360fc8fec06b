"""gradcheck / gradgradcheck themselves: they pass correct ops and catch wrong ones with a useful message."""
import argparse
import math
import re

import numpy as np
import pytest

import minigrad as mg
from minigrad import GradcheckError, Tensor, sweep
from minigrad.autograd import Function
from minigrad.backend import get_array_module
from minigrad.gradient_check import GradcheckWarning, float64_tolerances
from minigrad.opinfo import OpInfo


class SquareWrong(Function):
    """x**2 whose backward forgets the factor 2."""

    def forward(self, x):
        return x * x

    def backward(self, g):
        return (g * self.inputs[0],)


class SquareZeroGradLeak(Function):
    """x**2 with a right Jacobian, but a zero grad_output still yields a nonzero gradient."""

    def forward(self, x):
        return x * x

    def backward(self, g):
        x = self.inputs[0]
        leak = 0.0 if bool(g.numpy().any()) else 1.0
        return (g * x * 2.0 + x * leak,)


class SquareNondeterministic(Function):
    """x**2 whose backward drifts by ~1e-9 per call: inside gradcheck's tolerances, but not repeatable."""
    calls = 0

    def forward(self, x):
        return x * x

    def backward(self, g):
        SquareNondeterministic.calls += 1
        return (g * self.inputs[0] * (2.0 + 1e-9 * SquareNondeterministic.calls),)


class SquareFrozenBackward(Function):
    """x**2 with a right first derivative built from a constant: its second derivative is lost."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (g * Tensor._make(2.0 * self.x),)


def x64(values):
    return Tensor(np.asarray(values, np.float64), requires_grad=True)


@pytest.mark.parametrize("fast", [False, True])
def test_passes_on_correct_ops(fast):
    a, b = x64([[0.5, -1.0], [2.0, 0.3]]), x64([1.5, -0.7])
    assert mg.gradcheck(lambda a, b: (a @ b).tanh() * b, [a, b], fast=fast)
    assert mg.gradcheck(lambda a: (mg.nn.functional.softmax(a, axis=0), a.sum(axis=1)), [a], fast=fast)


def test_failure_names_output_input_worst_index_values_and_tolerances():
    x = x64([1.0, 3.0, 2.0])
    with pytest.raises(GradcheckError) as e:
        mg.gradcheck(SquareWrong.apply, [x])
    msg = str(e.value)
    assert "output 0" in msg and "input 0" in msg
    # the worst element is where |x - 2x| = x is largest: d out[1] / d in[1], analytic 3, numeric 6
    assert "d out(1,) / d in(1,)" in msg
    assert re.search(r"analytic 3(\.0+)?\b", msg) and re.search(r"numeric 6(\.0+\d*)?\b", msg), msg
    assert "eps=1e-06" in msg and "atol=1e-05" in msg and "rtol=0.001" in msg


def test_failure_names_the_right_input_and_output_among_several():
    a, b = x64([0.5, 1.5]), x64([2.0, -1.0])

    def fn(a, b):
        return a * 2.0, SquareWrong.apply(b) + a
    with pytest.raises(GradcheckError, match="output 1 with respect to input 1"):
        mg.gradcheck(fn, [a, b])


def test_fast_mode_fails_the_same_and_explains_with_the_full_jacobian():
    x = x64(np.linspace(0.5, 2.0, 6).reshape(2, 3))
    with pytest.raises(GradcheckError, match=r"input 0.*d out\(1, 2\) / d in\(1, 2\)"):
        mg.gradcheck(SquareWrong.apply, [x], fast=True)
    assert mg.gradcheck(SquareWrong.apply, [x], fast=True, raise_exception=False) is False


def test_warns_on_float32_inputs():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    with pytest.warns(GradcheckWarning, match="float32.*float64"):
        ok = mg.gradcheck(lambda t: t * 3.0, [x], atol=1e-2, rtol=1e-2, raise_exception=False)
    # the reason for the warning: at eps=1e-6 float32 rounding swamps even a linear function's slope
    assert ok is False


def test_zero_grad_output_must_give_zero_grads():
    x = x64([1.0, -2.0])
    with pytest.raises(GradcheckError, match="zero grad_output.*nonzero gradient for input 0"):
        mg.gradcheck(SquareZeroGradLeak.apply, [x])
    assert mg.gradcheck(SquareZeroGradLeak.apply, [x], check_zero_grad=False)


def test_nondeterministic_backward_is_detected():
    x = x64([1.0, -2.0])
    with pytest.raises(GradcheckError, match="not deterministic"):
        mg.gradcheck(SquareNondeterministic.apply, [x])


def test_gradgradcheck_passes_correct_ops_and_catches_a_lost_second_derivative():
    x = x64([0.7, -1.2, 2.0])
    assert mg.gradgradcheck(lambda t: t ** 3 * t.exp(), [x])
    assert mg.gradcheck(SquareFrozenBackward.apply, [x])           # first order is right...
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        mg.gradgradcheck(SquareFrozenBackward.apply, [x])          # ...second order is not


def test_gradcheck_needs_a_differentiable_input():
    with pytest.raises(ValueError, match="requires_grad"):
        mg.gradcheck(lambda t: t * 2.0, [Tensor(np.ones(2))])


def test_gradcheck_leaves_inputs_unchanged():
    v = np.array([0.3, -0.4, 1.1])
    x = x64(v.copy())
    mg.gradcheck(lambda t: t.tanh(), [x])
    mg.gradcheck(lambda t: t.tanh(), [x], fast=True)
    assert x.numpy().tolist() == v.tolist() and x.grad is None


# ------------------------------------------------------------------ the `minigrad gradcheck` sweep

def _args(**kw):
    return argparse.Namespace(**{"op": None, "first_order_only": False, **kw})


def test_sweep_prints_a_table_and_exits_zero(capsys):
    assert sweep.main(_args(op=["add", "matmul_2d", "softmax"])) == 0
    out = capsys.readouterr().out
    assert re.search(r"op\s+shapes\s+max abs err\s+max rel err\s+order\s+pass", out)
    assert re.search(r"matmul_2d\s+3x4 4x5\s+\S+\s+\S+\s+1\+2\s+ok", out)
    assert "3 passed, 0 failed" in out


def test_sweep_exits_nonzero_on_a_wrong_op(monkeypatch, capsys):
    wrong = OpInfo("square_wrong", SquareWrong.apply, np.square, ((3,),))
    monkeypatch.setattr(sweep, "OPS", [wrong] + [o for o in sweep.OPS if o.name == "exp"])
    assert sweep.main(_args()) == 1
    out = capsys.readouterr().out
    assert re.search(r"square_wrong.*FAIL", out) and "Jacobian mismatch" in out and "1 passed, 1 failed" in out


def test_sweep_rejects_unknown_op_names(capsys):
    assert sweep.main(_args(op=["nope"])) == 2
    assert "unknown op(s) nope" in capsys.readouterr().out


# ------------------------------------------------------------------ float64 tolerances vs PyTorch's defaults

class GeluTanhFifthDigit(Function):
    """The tanh GELU with its backward's cubic constant off in the fifth digit (0.044716 for 0.044715)."""

    def forward(self, x):
        self.c = math.sqrt(2 / math.pi)
        self.t = get_array_module(x).tanh(self.c * (x + 0.044715 * x ** 3))
        return 0.5 * x * (1 + self.t)

    def backward(self, g):
        x, t = self.inputs[0], Tensor._make(self.t)
        return (g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * self.c * (1.0 + 3 * 0.044716 * x * x)),)


def test_a_derivative_constant_off_in_its_fifth_digit_fails_at_float64_tolerance():
    x = x64(np.linspace(-2.5, 2.5, 11))
    # PyTorch's defaults (atol 1e-5, rtol 1e-3) let it through: the error is at most about 2e-6
    assert mg.gradcheck(GeluTanhFifthDigit.apply, [x])
    tight = float64_tolerances(GeluTanhFifthDigit.apply, [x])
    with pytest.raises(GradcheckError, match="Jacobian mismatch") as e:
        mg.gradcheck(GeluTanhFifthDigit.apply, [x], **tight)
    assert f"atol={tight['atol']}" in str(e.value) and "rtol=0.0" in str(e.value)
    # the same check passes the true derivative
    assert mg.gradcheck(lambda t: mg.nn.functional.gelu(t, approximate="tanh"), [x], **tight)


def test_float64_tolerances_are_below_the_defaults_and_scale_with_the_output():
    x = x64([0.5, -1.5])
    small = float64_tolerances(lambda t: t * 1.0, [x])
    big = float64_tolerances(lambda t: t * 1000.0, [x])
    assert small["atol"] < 1e-8          # PyTorch's default atol is 1e-5
    # the rounding term grows with the output's magnitude M0 (here 1500 against 1)
    assert big["atol"] > 100 * small["atol"]
