"""The dispatch point: every fast variant an op declares gives its reference's values.

For every registered op (minigrad/opinfo.py) and both float types, the forward and the
first-order gradients are computed once through the references (``minigrad.impl("reference")``)
and again under each setting that makes variants run: the native CPU loops, NumPy without them,
the CUDA kernels through the CPU emulator (their own shapes: head sizes 16..128), and tensors on
"cuda" served by the strict stand-in (the device variants; reference computed there too). A trace of
what the dispatch point chose proves that every declared variant, and every op's array backward,
was compared at least once.

Tolerance: a variant and the reference compute the same sums in another order (fused loops,
blocked GEMMs, one-pass softmax), so each output element differs by a few roundings per term of
the longest reduction it involves. With n the sum of the two largest input dimensions (an upper
bound on that length for these ops: a GEMM's inner dimension plus a softmax's row), we allow
64·n units of roundoff of the float type, relative to the output's magnitude.
"""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
from minigrad import backend, dispatch
from minigrad.opinfo import OPS

from conftest import tol

SETTINGS = {"native": {"MINIGRAD_CPU_NATIVE": "1", "MINIGRAD_KERNELS": "auto"},
            "numpy": {"MINIGRAD_CPU_NATIVE": "0", "MINIGRAD_KERNELS": "auto"},
            "emulate": {"MINIGRAD_CPU_NATIVE": "0", "MINIGRAD_KERNELS": "emulate"},
            # tensors on "cuda" served by the strict stand-in (backend._strict_cuda): the device variants
            "device": {"MINIGRAD_CPU_NATIVE": "0", "MINIGRAD_KERNELS": "off"}}


def _run(fn, arrays, seed=0):
    """(output, first-order gradients of a random projection of it) for fn on fresh leaves."""
    ts = [mg.Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    out = fn(*ts)
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    out.backward(mg.Tensor(g))
    return out.numpy(), [t.grad.numpy() if t.requires_grad and t.grad is not None else None for t in ts]


def _compare(name, fn, arrays, setting, monkeypatch, seen, errors):
    dims = sorted(d for a in arrays for d in a.shape)
    n = sum(dims[-2:]) if dims else 1
    with mg.impl("reference"):
        want, want_grads = _run(fn, arrays)
    for k, v in SETTINGS[setting].items():
        monkeypatch.setenv(k, v)
    with mg.impl("auto"), dispatch.trace() as chosen:
        got, got_grads = _run(fn, arrays)
    seen |= chosen
    dtype = arrays[0].dtype
    rtol, atol = tol(dtype, ulps=64 * n)
    for what, a, b in [("forward", got, want)] + [(f"grad {i}", x, y) for i, (x, y) in
                                                   enumerate(zip(got_grads, want_grads))]:
        if (a is None) != (b is None):
            errors.append(f"{name} [{setting}, {dtype}] {what}: one side has no gradient")
        elif a is not None:
            scale = max(1.0, float(np.abs(b).max(initial=0.0)))
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol * scale):
                errors.append(f"{name} [{setting}, {dtype}] {what}: max |diff| "
                              f"{np.abs(a - b).max():.3g} > {atol * scale:.3g} (chosen: {sorted(chosen)})")


def _kernel_cases(rng, dtype):
    """Inputs the CUDA kernel variants take (head sizes 16..128), with the calls that reach them."""
    q, k, v = (rng.standard_normal((1, 2, 5, 16)).astype(dtype) for _ in range(3))
    keep = np.array([True, False, True, True, False])[None, None, None, :]
    return [
        ("layer_norm", lambda x, w, b: F.layer_norm(x, 16, w, b),
         [rng.standard_normal(s).astype(dtype) for s in ((2, 3, 16), (16,), (16,))]),
        ("sdpa_causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v]),
        ("sdpa_key_mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep), [q, k, v]),
        ("qkv_self_attention", lambda x: F.qkv_self_attention(x, 2, is_causal=True),
         [rng.standard_normal((1, 5, 96)).astype(dtype)]),
    ]


def test_every_variant_matches_its_reference(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mg.impl("auto"):
            monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")
            if dispatch.cpu_native() is None:
                pytest.skip("the native CPU library could not be built here (no usable C++ compiler)")
    seen, errors = set(), []
    for dtype in (np.float64, np.float32):
        for op in OPS:
            arrays = op.inputs(np.random.default_rng(0), dtype=dtype)
            for setting in ("native", "numpy"):
                _compare(op.name, op.fn, arrays, setting, monkeypatch, seen, errors)
        if shutil.which("g++") is not None:
            for name, fn, arrays in _kernel_cases(np.random.default_rng(1), dtype):
                _compare(name, fn, arrays, "emulate", monkeypatch, seen, errors)
    monkeypatch.setattr(backend, "_strict_cuda", True)     # reference and variants both on the device
    with backend.default_device("cuda"):
        for dtype in (np.float64, np.float32):
            for op in OPS:
                _compare(op.name, op.fn, op.inputs(np.random.default_rng(0), dtype=dtype), "device",
                         monkeypatch, seen, errors)
    assert not errors, "\n".join(errors)

    from minigrad import ops
    declared = set(dispatch.all_variants(ops))
    if shutil.which("g++") is None:
        declared = {v for v in declared if not v.endswith("Kernel")}
    assert declared - seen == set(), f"declared variants never compared with their reference: {declared - seen}"
    with_arrays = {c.__name__ for c in vars(ops).values()
                   if isinstance(c, type) and c.__dict__.get("backward_arrays") is not None}
    missing = {f"{c}.backward_arrays" for c in with_arrays} - seen
    assert not missing, f"array backwards never compared with the Tensor-op backward: {missing}"


def test_reference_mode_runs_no_variant_and_no_native_code():
    from minigrad.models.gpt import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=32), seed=0)
    x = np.arange(16).reshape(2, 8) % 11
    with mg.impl("reference"), dispatch.trace() as chosen:
        assert dispatch.cpu_native() is None and not dispatch.use_kernels("cpu")
        _, loss = model(x, x)
        fns, stack = [], [loss._ctx]       # the graph, walked before backward frees it
        while stack:
            fn = stack.pop()
            if fn is not None:
                fns.append(fn)
                stack.extend(t._ctx for t in fn.inputs)
        loss.backward()
    assert chosen == set()
    assert fns and all(type(fn) is fn.op for fn in fns)
    assert {"QKVAttention", "GeluMLP", "LayerNorm", "CrossEntropy"} <= {fn.op.__name__ for fn in fns}
    assert all(p.grad is not None for p in model.parameters())


def test_impl_switches_and_their_errors(monkeypatch):
    assert mg.get_impl() in dispatch.IMPLS
    prev = mg.set_impl("reference")
    try:
        assert mg.get_impl() == "reference"
        with mg.impl("auto"):
            assert mg.get_impl() == "auto"
        assert mg.get_impl() == "reference"
    finally:
        mg.set_impl(prev)
    with pytest.raises(ValueError, match="expected one of auto, reference, got 'fast'"):
        mg.set_impl("fast")
    monkeypatch.setenv("MINIGRAD_IMPL", "fastest")
    with pytest.raises(ValueError, match="MINIGRAD_IMPL='fastest'"):
        dispatch._impl_from_env()


def test_a_variant_must_subclass_its_op():
    from minigrad.autograd import Function

    class Op(Function):
        def forward(self, x):
            return x

    with pytest.raises(AssertionError, match="must subclass Op"):
        @Op.variant("native")
        class Stray(Function):
            takes = staticmethod(lambda x: True)
    assert Op.variants == ()


def test_reference_training_still_trains(tmp_path, monkeypatch):
    """`minigrad train` under MINIGRAD_IMPL=reference: every op through its reference, only slower."""
    from minigrad.models import cli
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 100)
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "data"))
    args = ["train", "--data", str(corpus), "--out-dir", str(tmp_path / "run"), "--max-iters", "3",
            "--eval-interval", "3", "--eval-iters", "1", "--final-eval-iters", "1", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--quiet"]
    with mg.impl("reference"), dispatch.trace() as chosen:
        assert cli.main(args) == 0
    assert chosen == set()     # nothing chosen in this process (a forked worker inherits the mode)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 3 and all(np.isfinite(float(__import__("json").loads(r)["loss"])) for r in log)
