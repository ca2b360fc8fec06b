"""The strict test backend (minigrad/strict.py) refuses what CuPy refuses, and the whole op
registry plus a small nn training step run on it (enabled around each test, inside the normal
test run; the full suite can also run on it with MINIGRAD_STRICT=1)."""
import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
from minigrad import Tensor, backend, nn, optim, strict, sweep
from minigrad.opinfo import OPS
from minigrad.strict import StrictArray, StrictConversionError

# ------------------------------------------------------------------ the backend's refusals

def test_strict_arrays_refuse_implicit_conversion_to_numpy():
    a = strict.asarray(np.arange(3.0))
    assert isinstance(a, StrictArray) and not isinstance(a, np.ndarray)
    with pytest.raises(StrictConversionError, match="implicit conversion"):
        np.asarray(a)
    with pytest.raises(StrictConversionError):
        np.array(a)
    assert backend.to_host(a).tolist() == [0.0, 1.0, 2.0]          # the explicit way
    assert isinstance(a.get(), np.ndarray)


@pytest.mark.parametrize("mix", [lambda s, h: s + h, lambda s, h: h + s, lambda s, h: s * h, lambda s, h: h @ s,
                                 lambda s, h: np.add(s, h), lambda s, h: np.concatenate([s, h]),
                                 lambda s, h: strict.where(s > 0, s, h), lambda s, h: strict.maximum(h, s)])
def test_strict_arrays_refuse_mixing_with_numpy_arrays(mix):
    s, h = strict.asarray(np.ones(3)), np.ones(3)
    with pytest.raises(StrictConversionError, match="numpy.ndarray was mixed"):
        mix(s, h)


def test_strict_module_mirrors_numpy_and_returns_device_arrays():
    z = strict.zeros((2, 3), dtype=np.float32)
    assert isinstance(z, StrictArray) and z.shape == (2, 3) and z.dtype == np.float32
    s = strict.exp(z).sum()
    assert isinstance(s, StrictArray) and s.ndim == 0, "reductions give 0-d device arrays, as CuPy's"
    assert float(s) == 6.0
    out = strict.zeros(3)
    strict.add.at(out, np.array([0, 0, 2]), strict.ones(3))        # host index arrays are allowed
    assert backend.to_host(out).tolist() == [2.0, 0.0, 1.0]
    assert backend.get_array_module(z) is strict


def test_enable_makes_cpu_tensors_strict(strict_backend):
    t = Tensor(np.ones(2))
    assert isinstance(t.data, StrictArray) and t.device == "cpu"
    assert isinstance(t.numpy(), np.ndarray)
    assert isinstance(mg.zeros(3).data, StrictArray)


def test_disable_restores_numpy():
    prev = strict.enabled()
    strict.enable(False)
    try:
        assert isinstance(Tensor(np.ones(2)).data, np.ndarray)
    finally:
        strict.enable(prev)


# ------------------------------------------------------------------ the registry sweep on strict arrays

@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_registry_op_runs_on_the_strict_backend(op, strict_backend):
    arrays = op.inputs(np.random.default_rng(0), np.float64)
    ts = [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    assert all(isinstance(t.data, StrictArray) for t in ts)
    out = op.fn(*ts)
    assert isinstance(out.data, StrictArray), f"{op.name} returned a {type(out.data).__name__}"
    assert_close(out, op.ref(*arrays), err_msg=op.name)
    out.backward(Tensor(np.ones(out.shape)))
    for t in ts:
        if t.requires_grad:
            assert isinstance(t.grad.data, StrictArray), f"{op.name}: gradient left the device"
    ok, msg, _, _ = sweep.check_op(op)          # forward vs NumPy, gradcheck, gradgradcheck
    assert ok, f"{op.name} on the strict backend: {msg}"


# ------------------------------------------------------------------ nn and optim on strict arrays

def test_transformer_like_training_step_on_the_strict_backend(strict_backend):
    rng = np.random.default_rng(0)
    emb = nn.Embedding(11, 16, rng=rng)
    attn = nn.MultiheadAttention(16, 2, rng=rng)
    ln = nn.LayerNorm(16)
    head = nn.Linear(16, 11, rng=rng)
    drop = nn.Dropout(0.1, generator=np.random.default_rng(1))
    model = nn.ModuleList([emb, attn, ln, head, drop])
    assert all(isinstance(p.data, StrictArray) for p in model.parameters())
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    idx = rng.integers(0, 11, (2, 5))
    pad = np.zeros((2, 5), bool)
    pad[1, 3:] = True
    losses = []
    for _ in range(3):
        opt.zero_grad()
        h = emb(Tensor(idx))
        h = h + drop(attn(ln(h), key_padding_mask=pad, is_causal=True))
        logits = head(nn.functional.gelu(h))
        loss = nn.functional.cross_entropy(logits, np.roll(idx, -1, axis=1))
        loss.backward()
        norm = optim.clip_grad_norm_(model.parameters(), 1.0)
        assert np.isfinite(norm)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(isinstance(p.data, StrictArray) and isinstance(p.grad.data, StrictArray) for p in model.parameters())
    sd = model.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())       # checkpoints are host arrays
    model.load_state_dict(sd)
    assert all(isinstance(p.data, StrictArray) for p in model.parameters())
    osd = opt.state_dict()
    opt.load_state_dict(osd)
    assert all(isinstance(v, StrictArray) for st in opt.state.values() for v in st.values() if hasattr(v, "shape"))


def test_fast_gradcheck_and_grad_on_the_strict_backend(strict_backend):
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
    assert mg.gradcheck(lambda t: nn.functional.log_softmax(t * t, axis=1), [x], fast=True)
    (g,) = mg.grad(nn.functional.logsumexp(x, axis=1).sum(), x, create_graph=True)
    assert isinstance(g.data, StrictArray)
    (h,) = mg.grad((g * g).sum(), x)
    assert isinstance(h.data, StrictArray)


def test_the_op_and_nn_suites_pass_on_the_strict_backend():
    """The whole op and nn test files, rerun in a subprocess with MINIGRAD_STRICT=1, so every
    "cpu" tensor holds strict arrays: NumPy-only code anywhere in those paths fails here."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).parent
    files = ["test_ops.py", "test_shapes_hypothesis.py", "test_autograd.py", "test_nn.py", "test_optim.py",
             "test_gradcheck.py", "test_errors.py"]
    env = {**os.environ, "MINIGRAD_STRICT": "1", "MINIGRAD_KERNELS": "off"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *files],
                       cwd=here, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
