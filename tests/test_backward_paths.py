"""The create_graph backward equals the plain backward, for every registered op and every
implementation the dispatch point can choose.

An op's first-order backward often takes its own path (arrays saved by the forward, native C++
loops, the CUDA kernels under the emulator), while create_graph=True runs the Tensor-op formula
that gradgradcheck differentiates. gradgradcheck only checks that formula's own derivative, so
nothing else ties it to the true gradient: a create_graph formula that dropped a term of
layer_norm's gradient, or forgot attention's scale in dk, passed everything. Here the two
gradients of the same output, contracted with the same random upstream gradient, must agree.

Tolerance, per input: |plain - create_graph| <= ULPS · eps · S elementwise, eps = 2^-52 and S the
largest magnitude in either gradient of that input (the result's scale). Both sides evaluate the
same formula in float64 from the same inputs, in a different order: every element of these small
samples (reductions over at most 6 terms, a softmax or a normalisation on top) goes through at
most about 8 roundings of terms no larger than a small multiple of S, so each side is within
8 u S = 4 eps S of the exact value and the two within 8 eps S. ULPS = 16 doubles that for terms
somewhat larger than the result (layer_norm's gradient is a difference of such terms). Measured:
at most 1.4 eps S over the registry and all implementations. The bugs this is for are off by
0.1 S or more.

The implementations are conftest.IMPLS (switched in one place, conftest.use_impl): every op runs
under "reference" and "native"; those declaring the "emulate" variant in the registry also under
the emulated CUDA kernels, at the shapes the kernels take (OpInfo.variant_shapes). A declared
variant must really run (the switch's record says so), and "reference" must run no native loop
and no kernel.
"""
import numpy as np
import pytest
from conftest import use_impl

import minigrad as mg
from minigrad import Tensor
from minigrad.opinfo import OPS

ULPS = 16
EPS = float(np.finfo(np.float64).eps)

CASES = [(op, name) for op in OPS for name in ("reference", "native", "emulate")
         if name != "emulate" or "emulate" in op.variants]


def _gradients(op, arrays, v, create_graph):
    """d<op(arrays), v>/d(float inputs), from a fresh forward, by the plain or the create_graph backward."""
    ts = [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    out = op.fn(*ts)
    gs = mg.grad(out, [t for t in ts if t.requires_grad], Tensor(v), create_graph=create_graph)
    return [np.zeros(t.shape) if g is None else g.numpy() for t, g in zip([t for t in ts if t.requires_grad], gs)]


@pytest.mark.parametrize("op,impl_name", CASES, ids=[f"{op.name}-{name}" for op, name in CASES])
def test_create_graph_gradient_equals_the_plain_gradient(monkeypatch, op, impl_name):
    record = use_impl(monkeypatch, impl_name)
    rng = np.random.default_rng(0)
    arrays = op.inputs(rng, np.float64, shapes=op.variant_shapes.get(impl_name))
    v = rng.standard_normal(np.shape(op.ref(*arrays)))
    plain = _gradients(op, arrays, v, create_graph=False)
    graph = _gradients(op, arrays, v, create_graph=True)
    for i, (a, b) in enumerate(zip(plain, graph)):
        scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
        np.testing.assert_allclose(b, a, rtol=0, atol=ULPS * EPS * scale,
                                   err_msg=f"{op.name} [{impl_name}]: create_graph vs plain gradient of input {i}")
    if impl_name == "reference":
        assert record.native == 0 and record.kernels == 0, f"{op.name}: the reference run used a fast variant"
    elif impl_name in op.variants:
        assert record.ran(impl_name), f"{op.name} declares the {impl_name!r} variant, but it did not run"


def test_every_fused_gpt_op_and_nn_op_is_covered_with_its_variants():
    names = {op.name: op for op in OPS}
    for name in ("gelu_mlp", "qkv_self_attention", "cross_entropy", "layer_norm", "sdpa", "sdpa_causal_padded"):
        assert name in names, f"the registry has no entry {name!r}"
        assert "native" in names[name].variants, f"{name}: its native variant is not declared"
    for name in ("layer_norm", "sdpa", "qkv_self_attention"):
        assert "emulate" in names[name].variants, f"{name}: its emulated kernel is not declared"
