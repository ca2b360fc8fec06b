"""Central-difference gradient checks: gradcheck (first order) and gradgradcheck (second order).

The analytic side is the engine's vector-Jacobian product (one backward per output element,
or one in fast mode); the numeric side perturbs each input element by +-eps. Elements pass
when |analytic - numeric| <= atol + rtol * |numeric|.

Tolerances. The defaults (eps=1e-6, atol=1e-5, rtol=1e-3) are PyTorch's, so a check ported from
PyTorch means the same here. They are loose for float64: a derivative off in its fifth digit
passes them. ``float64_tolerances(fn, inputs)`` gives the tolerance float64 supports, from the
error bound of a central difference,

    |numeric - exact| <= eps^2 M3 / 6  +  k u M0 / eps

(truncation: M3 bounds the third derivative near the point; rounding: each output is computed
with a relative error of at most k units u = 2^-53 of its magnitude M0, twice, and the
difference is divided by 2 eps). With eps = 1e-6, k = 16 and M3 <= 1e3 this is
1.7e-10 + 1.8e-9 M0, four orders of magnitude below the default atol. The analytic side's own
rounding (a few u, relative) is far below that, so rtol is 0. Measured over the op registry, the
rounding term is at most 2.4 u M0 / eps (first and second order), so k = 16 leaves a margin of 6.
"""
from __future__ import annotations

import warnings

import numpy as np

from .autograd import grad as _grad
from .backend import get_array_module, to_host
from .tensor import Tensor


class GradcheckError(AssertionError):
    """A gradient check failed; the message names the output, the input and the worst element."""


class GradcheckWarning(UserWarning):
    pass


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _outputs(fn, inputs):
    # grad mode stays on: for gradgradcheck, fn itself calls grad() and needs a graph
    return [o.data.copy() for o in _as_tuple(fn(*inputs)) if isinstance(o, Tensor)]


def _float_outputs(outs):
    return [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o.dtype.kind == "f"]


def _vjp(fn, inputs, diff, out_index, v):
    """Gradients of output ``out_index`` contracted with ``v`` (array), w.r.t. inputs ``diff``."""
    outs = _as_tuple(fn(*inputs))
    o = outs[out_index]
    if not o.requires_grad:
        return [None] * len(diff)
    return list(_grad([o], [inputs[j] for j in diff], [Tensor._make(v)], retain_graph=False))


def _numeric_column(fn, inputs, j, flat_index, eps, out_index):
    """d(output)/d(input j element) by central differences, as a flat host array."""
    x = inputs[j].data.reshape(-1)
    orig = x[flat_index].item()
    x[flat_index] = orig + eps
    plus = to_host(_outputs(fn, inputs)[out_index]).reshape(-1)
    x[flat_index] = orig - eps
    minus = to_host(_outputs(fn, inputs)[out_index]).reshape(-1)
    x[flat_index] = orig
    return (plus - minus) / (2 * eps)


def _jacobians(fn, inputs, diff, out_index, out_size, eps):
    """Full analytic and numeric Jacobians, each (out_size, in_size) per differentiable input."""
    xp = get_array_module(inputs[diff[0]].data)
    o0 = _outputs(fn, inputs)[out_index]
    analytic = [np.zeros((out_size, inputs[j].data.size)) for j in diff]
    for k in range(out_size):
        v = xp.zeros(out_size, dtype=o0.dtype)
        v[k] = 1
        gs = _vjp(fn, inputs, diff, out_index, v.reshape(o0.shape))
        for a, g in zip(analytic, gs):
            if g is not None:
                a[k] = to_host(g.data).reshape(-1)
    numeric = []
    for j in diff:
        n = np.zeros((out_size, inputs[j].data.size))
        for e in range(inputs[j].data.size):
            n[:, e] = _numeric_column(fn, inputs, j, e, eps, out_index)
        numeric.append(n)
    return analytic, numeric


def _fail(what, out_index, in_index, a, n, eps, atol, rtol, out_shape, in_shape):
    excess = np.abs(a - n) - (atol + rtol * np.abs(n))
    r, c = np.unravel_index(int(np.argmax(excess)), excess.shape)
    oi = np.unravel_index(r, out_shape) if out_shape else ()
    ii = np.unravel_index(c, in_shape) if in_shape else ()
    raise GradcheckError(
        f"{what} mismatch for output {out_index} with respect to input {in_index}: worst element is "
        f"d out{tuple(int(i) for i in oi)} / d in{tuple(int(i) for i in ii)}: analytic {a[r, c]:.10g}, "
        f"numeric {n[r, c]:.10g} (|diff| {abs(a[r, c] - n[r, c]):.3g}); eps={eps}, atol={atol}, rtol={rtol}"
        + (f"\nanalytic:\n{a}\nnumeric:\n{n}" if a.size <= 64 else ""))


U64 = float(np.finfo(np.float64).eps) / 2      # the unit roundoff of float64, 2^-53


def float64_tolerances(fn, inputs, order=1, eps=1e-6, rounding_steps=16, third_derivative=1e3, seed=0):
    """{"eps", "atol", "rtol"} for gradcheck (order=1) or gradgradcheck (order=2) of ``fn`` at
    float64 ``inputs``, from the central-difference error bound in the module docstring:
    atol = eps^2 third_derivative / 6 + rounding_steps u M0 / eps and rtol = 0, where M0 is the
    largest magnitude (at least 1) among the outputs of the function checked (``fn`` itself, or
    for order=2 its first-order gradients at the grad_outputs gradgradcheck(seed=seed) draws),
    times the largest input magnitude (at least 1).
    ``third_derivative`` bounds the third derivative near the inputs; the default suits inputs
    and outputs of order one.
    """
    inputs = list(_as_tuple(inputs))
    if order == 1:
        outs = _outputs(fn, inputs)
    elif order == 2:
        first_order, args = _first_order(fn, inputs, None, seed)
        outs = _outputs(first_order, args)
    else:
        raise ValueError(f"float64_tolerances: order must be 1 or 2, got {order}")
    m0 = max([1.0] + [float(abs(to_host(o)).max()) for o in outs if o.size and o.dtype.kind == "f"])
    # an input's own rounding (|x| u) moves each value computed from it by about |x| u |d/dx|: with
    # inputs far from order one (logcumsumexp over values in the hundreds) that dominates
    m0 *= max([1.0] + [float(abs(to_host(t.data)).max()) for t in inputs
                       if isinstance(t, Tensor) and t.data.size and t.dtype.kind == "f"])
    atol = eps * eps * third_derivative / 6 + rounding_steps * U64 * m0 / eps
    return {"eps": eps, "atol": atol, "rtol": 0.0}


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, fast=False, seed=0,
              check_zero_grad=True, check_repeat=True, raise_exception=True):
    """Check ``fn``'s analytic gradients against central differences.

    ``fn(*inputs)`` returns a Tensor or a tuple of Tensors. Inputs with requires_grad are
    differentiated (checked in float64: float32 inputs get a GradcheckWarning, since eps=1e-6
    is below float32's resolution). ``fast=True`` compares one random directional derivative
    vᵀJu per (output, input) pair and falls back to the full Jacobian only to explain a failure.
    Returns True, or raises GradcheckError (returns False with raise_exception=False).
    The default tolerances are PyTorch's; ``**float64_tolerances(fn, inputs)`` gives float64's own.
    """
    try:
        _gradcheck(fn, list(_as_tuple(inputs)), eps, atol, rtol, fast, seed, check_zero_grad, check_repeat)
    except GradcheckError:
        if raise_exception:
            raise
        return False
    return True


def _gradcheck(fn, inputs, eps, atol, rtol, fast, seed, check_zero_grad, check_repeat):
    diff = [j for j, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not diff:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for j in diff:
        if inputs[j].dtype != np.float64:
            warnings.warn(f"gradcheck: input {j} is {inputs[j].dtype}, not float64; central differences with "
                          f"eps={eps} are dominated by rounding error in low precision. Use .double() inputs.",
                          GradcheckWarning, stacklevel=3)
        if not inputs[j].data.flags.c_contiguous:
            inputs[j].data = inputs[j]._xp.ascontiguousarray(inputs[j].data)
    outs0 = _outputs(fn, inputs)
    rng = np.random.default_rng(seed)
    for oi in range(len(outs0)):
        if outs0[oi].dtype.kind != "f":
            continue
        out_shape, out_size = outs0[oi].shape, outs0[oi].size
        xp = get_array_module(outs0[oi])
        if fast:
            v = xp.asarray(rng.standard_normal(out_shape)).astype(outs0[oi].dtype)
            gs = _vjp(fn, inputs, diff, oi, v)
            for j, g in zip(diff, gs):
                x = inputs[j].data
                u = xp.asarray(rng.standard_normal(x.shape)).astype(x.dtype)
                analytic = 0.0 if g is None else float((g.data * u).sum())
                orig = x.copy()
                x += eps * u
                plus = _outputs(fn, inputs)[oi]
                x[...] = orig - eps * u
                minus = _outputs(fn, inputs)[oi]
                x[...] = orig
                numeric = float(((plus - minus) * v).sum()) / (2 * eps)
                if abs(analytic - numeric) > atol + rtol * abs(numeric):
                    if out_size * x.size <= 1_000_000:
                        a, n = _jacobians(fn, inputs, [j], oi, out_size, eps)
                        _fail("Jacobian", oi, j, a[0], n[0], eps, atol, rtol, out_shape, x.shape)
                    raise GradcheckError(
                        f"Jacobian mismatch for output {oi} with respect to input {j} (fast mode, vᵀJu): "
                        f"analytic {analytic:.10g}, numeric {numeric:.10g}; eps={eps}, atol={atol}, rtol={rtol}")
        else:
            analytic, numeric = _jacobians(fn, inputs, diff, oi, out_size, eps)
            for j, a, n in zip(diff, analytic, numeric):
                if not np.all(np.abs(a - n) <= atol + rtol * np.abs(n)):
                    _fail("Jacobian", oi, j, a, n, eps, atol, rtol, out_shape, inputs[j].shape)
        if check_zero_grad or check_repeat:
            _check_backward_behaviour(fn, inputs, diff, oi, outs0[oi], rng, check_zero_grad, check_repeat)


def _check_backward_behaviour(fn, inputs, diff, oi, out0, rng, check_zero_grad, check_repeat):
    xp = get_array_module(out0)
    if check_zero_grad:
        for j, g in zip(diff, _vjp(fn, inputs, diff, oi, xp.zeros_like(out0))):
            if g is not None and bool((g.data != 0).any()):
                raise GradcheckError(f"a zero grad_output for output {oi} gave a nonzero gradient for input {j} "
                                     f"(max |grad| {float(abs(g.data).max()):.3g})")
    if check_repeat:
        v = xp.asarray(rng.standard_normal(out0.shape)).astype(out0.dtype)
        first = _vjp(fn, inputs, diff, oi, v)
        second = _vjp(fn, inputs, diff, oi, v)
        for j, a, b in zip(diff, first, second):
            if (a is None) != (b is None) or (a is not None and not bool((a.data == b.data).all())):
                raise GradcheckError(f"backward is not deterministic: two backward passes for output {oi} "
                                     f"gave different gradients for input {j}")


def gradgradcheck(fn, inputs, grad_outputs=None, eps=1e-6, atol=1e-5, rtol=1e-3, fast=False, seed=0):
    """Second-order check: gradcheck of (inputs, grad_outputs) -> d(<fn(inputs), grad_outputs>)/d inputs,
    the first-order gradients computed with create_graph=True. The default tolerances are
    PyTorch's; ``**float64_tolerances(fn, inputs, order=2)`` gives float64's own."""
    first_order, args = _first_order(fn, list(_as_tuple(inputs)), grad_outputs, seed)
    return gradcheck(first_order, args, eps=eps, atol=atol, rtol=rtol, fast=fast, seed=seed,
                     check_zero_grad=False)


def _first_order(fn, inputs, grad_outputs, seed):
    """(first_order, inputs + grad_outputs): the function gradgradcheck checks, and its arguments."""
    outs = _as_tuple(fn(*inputs))
    fidx = _float_outputs(outs)
    if grad_outputs is None:
        rng = np.random.default_rng(seed + 1)
        grad_outputs = [Tensor._make(outs[i]._xp.asarray(rng.standard_normal(outs[i].shape)).astype(outs[i].dtype),
                                     True) for i in fidx]
    grad_outputs = list(_as_tuple(grad_outputs))
    n_in = len(inputs)
    diff = [j for j, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def first_order(*args):
        ins, gos = list(args[:n_in]), args[n_in:]
        o = _as_tuple(fn(*ins))
        pairs = [(o[i], g) for i, g in zip(fidx, gos) if o[i].requires_grad]
        if not pairs:
            return tuple(ins[j] * 0.0 for j in diff)
        gs = _grad([p[0] for p in pairs], [ins[j] for j in diff], [p[1] for p in pairs], create_graph=True)
        return tuple(g if g is not None else ins[j] * 0.0 for j, g in zip(diff, gs))

    return first_order, inputs + grad_outputs
