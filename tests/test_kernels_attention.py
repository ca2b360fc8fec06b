"""The fused attention kernels (kernels/attention.cu) against the NumPy reference.

Runs the exact .cu source on the CPU emulator (numpy arrays), and on a GPU through CuPy when
one is visible (skipped with a reason otherwise). Tolerances are issue 5's: float32 error
<= 2e-5 relative to max|ref| (about 170 float32 ulps), float64 <= 1e-12 (about 4500 ulps);
the reference is evaluated in float64 from the same inputs.
"""
import shutil
import tracemalloc
from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrad.kernels import attention as A
from minigrad.kernels.attention import attention_backward_ref, attention_forward_ref, attention_probs

TOL = {np.float32: 2e-5, np.float64: 1e-12}

if shutil.which("g++") is None:
    pytest.skip("no g++: the CPU emulator cannot build the kernels", allow_module_level=True)


def _cupy_or_none():
    from minigrad.kernels.validate import gpu_available
    if gpu_available():
        import cupy
        return cupy
    return None


DEVICES = ["emulate", pytest.param("cuda", marks=pytest.mark.skipif(
    _cupy_or_none() is None, reason="no GPU: cupy cannot see a device"))]


def _to(device, a):
    return a if device == "emulate" or a is None else _cupy_or_none().asarray(a)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _inputs(B, H, Tq, Tk, d, dtype, masked, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, Tq, d)).astype(dtype)
    k = rng.standard_normal((B, H, Tk, d)).astype(dtype)
    v = rng.standard_normal((B, H, Tk, d)).astype(dtype)
    do = rng.standard_normal((B, H, Tq, d)).astype(dtype)
    key_mask = None
    if masked:
        key_mask = rng.random((B, Tk)) > 0.3
        key_mask[:, 0] = True     # at least one key per batch (empty rows have their own test)
        if Tk > 3:
            key_mask[:, -1] = False
    return q, k, v, do, key_mask


def _rel_err(got, ref, scale=None):
    """max|got - ref| / max|scale| (scale defaults to ref)."""
    scale = ref if scale is None else scale
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(scale).max(), 1e-300))


def _grad_magnitudes(q, k, v, o, do, key_mask, causal):
    """The backward's sums taken over absolute values (float64): the scale its rounding error is
    relative to. Equal to max|grad| unless terms cancel, e.g. dq = dk = 0 exactly when Tk = 1."""
    p, _, scale = attention_probs(q, k, key_mask, causal)
    ds_abs = p * (np.abs(do) @ np.abs(v).swapaxes(-1, -2) + (np.abs(do) * np.abs(o)).sum(-1, keepdims=True))
    dq_abs = ds_abs @ np.abs(k) * scale
    dk_abs = ds_abs.swapaxes(-1, -2) @ np.abs(q) * scale
    dv_abs = p.swapaxes(-1, -2) @ np.abs(do)
    return dq_abs, dk_abs, dv_abs


# (B, H, Tq, Tk, d, dtype, causal, masked): every T in {1, 7, 64, 65, 200}, Tq != Tk both ways,
# d in {16, 40, 64, 128} (40 runs padded in the D=64 tile), every (dtype, D) instantiation,
# causal and not, with and without a padding mask; not the full product.
CASES = [
    (1, 1, 1, 1, 16, np.float32, False, False),
    (1, 2, 1, 7, 16, np.float64, True, False),
    (2, 2, 7, 7, 40, np.float32, True, True),
    (1, 2, 64, 64, 64, np.float32, True, False),
    (2, 1, 65, 65, 64, np.float64, False, True),
    (1, 2, 64, 65, 128, np.float32, True, True),
    (1, 1, 65, 64, 16, np.float32, True, True),
    (1, 1, 200, 7, 40, np.float64, True, False),
    (1, 1, 7, 200, 128, np.float64, False, True),
    (1, 1, 200, 200, 16, np.float64, True, True),
    (2, 1, 200, 65, 32, np.float32, False, False),
    (1, 2, 65, 200, 32, np.float64, True, False),
    (1, 1, 200, 64, 128, np.float32, False, True),
    (1, 1, 64, 200, 40, np.float32, True, True),
    (1, 1, 65, 7, 64, np.float64, True, True),
    (1, 1, 7, 65, 16, np.float64, False, False),
]


def _case_id(c):
    B, H, Tq, Tk, d, dt, causal, masked = c
    return f"{np.dtype(dt).name}-B{B}H{H}-Tq{Tq}-Tk{Tk}-d{d}{'-causal' if causal else ''}{'-mask' if masked else ''}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward_backward_match_reference(case, device):
    B, H, Tq, Tk, d, dtype, causal, masked = case
    _check_against_reference(*_inputs(B, H, Tq, Tk, d, dtype, masked), causal, device)


def _check_against_reference(q, k, v, do, km, causal, device="emulate"):
    dtype = q.dtype.type
    f64 = [a.astype(np.float64) for a in (q, k, v, do)]
    ro, rlse = attention_forward_ref(f64[0], f64[1], f64[2], km, causal)
    o, lse = (_host(a) for a in A.attention_forward(*(_to(device, a) for a in (q, k, v, km)), is_causal=causal))
    assert o.dtype == dtype and lse.dtype == dtype and o.shape == q.shape and lse.shape == q.shape[:3]
    tol = TOL[dtype]
    assert _rel_err(o, ro) <= tol
    finite = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), finite) and np.all(lse[~finite] == -np.inf)
    assert np.abs(lse[finite] - rlse[finite]).max(initial=0) <= tol * max(1.0, np.abs(rlse[finite]).max(initial=0))
    grads = A.attention_backward(*(_to(device, a) for a in (q, k, v, o, lse, do, km)), is_causal=causal)
    refs = attention_backward_ref(f64[0], f64[1], f64[2], o.astype(np.float64), rlse, f64[3], km, causal)
    mags = _grad_magnitudes(f64[0], f64[1], f64[2], o.astype(np.float64), f64[3], km, causal)
    for name, g, r, m in zip(("dq", "dk", "dv"), grads, refs, mags):
        g = _host(g)
        assert g.dtype == dtype and np.isfinite(g).all(), name
        assert _rel_err(g, r, m) <= tol, name


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 150), Tk=st.integers(1, 150),
       d=st.integers(16, 128), double=st.booleans(), causal=st.booleans(), masked=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_drawn_shapes_match_reference(B, H, Tq, Tk, d, double, causal, masked, seed):
    dtype = np.float64 if double else np.float32
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal(s).astype(dtype) for s in
                   ((B, H, Tq, d), (B, H, Tk, d), (B, H, Tk, d), (B, H, Tq, d)))
    km = rng.random((B, Tk)) > 0.4 if masked else None   # may leave a batch without keys
    _check_against_reference(q, k, v, do, km, causal)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_without_keys_give_zero_output_and_gradients(device):
    # batch 1's keys are all padded out; under causal masking with Tq > Tk the first Tq - Tk
    # queries of batch 0 see no key either
    q, k, v, do, _ = _inputs(2, 2, 9, 5, 16, np.float64, False, seed=3)
    km = np.ones((2, 5), dtype=bool)
    km[1] = False
    o, lse = A.attention_forward(*(_to(device, a) for a in (q, k, v, km)), is_causal=True)
    dq, dk, dv = (_host(g) for g in A.attention_backward(
        *(_to(device, a) for a in (q, k, v, o, lse, do, km)), is_causal=True))
    o, lse = _host(o), _host(lse)
    empty = np.zeros((2, 2, 9), dtype=bool)
    empty[1] = True
    empty[0, :, :4] = True
    assert np.all(o[empty] == 0) and np.all(lse[empty] == -np.inf)
    assert np.isfinite(o).all() and np.isfinite(lse[~empty]).all()
    assert np.all(dq[empty] == 0) and np.all(dk[1] == 0) and np.all(dv[1] == 0)
    for g in (dq, dk, dv):
        assert np.isfinite(g).all()
    # the rows that do see keys still match the reference
    ro, _ = attention_forward_ref(q, k, v, km, True)
    assert _rel_err(o, ro) <= TOL[np.float64]


def test_explicit_scale_and_default_scale():
    q, k, v, do, km = _inputs(1, 2, 33, 47, 24, np.float64, True, seed=5)
    for scale in (None, 0.3):
        o, lse = A.attention_forward(q, k, v, km, True, scale)
        ro, rlse = attention_forward_ref(q, k, v, km, True, scale)
        assert _rel_err(o, ro) <= TOL[np.float64] and _rel_err(lse, rlse) <= TOL[np.float64]
        grads = A.attention_backward(q, k, v, o, lse, do, km, True, scale)
        for g, r in zip(grads, attention_backward_ref(q, k, v, o, lse, do, km, True, scale)):
            assert _rel_err(g, r) <= TOL[np.float64]


def test_repeated_runs_are_bit_identical():
    q, k, v, do, km = _inputs(2, 2, 130, 97, 64, np.float32, True, seed=7)
    runs = []
    for _ in range(2):
        o, lse = A.attention_forward(q, k, v, km, True)
        runs.append((o, lse) + A.attention_backward(q, k, v, o, lse, do, km, True))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)


def test_no_quadratic_buffer_is_allocated():
    # One float32 T x T score matrix per head (1 MiB) would be 8x all the outputs together.
    B, H, T, d = 1, 2, 512, 16
    q, k, v, do, km = _inputs(B, H, T, T, d, np.float32, True, seed=11)
    A.attention_forward(q, k, v, km, True)  # build / load the emulator library first
    del A.ALLOCATIONS[:]
    tracemalloc.start()
    try:
        o, lse = A.attention_forward(q, k, v, km, True)
        A.attention_backward(q, k, v, o, lse, do, km, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(n for n, _ in A.ALLOCATIONS) == ["dk", "dq", "drow", "dv", "lse", "o"]
    for name, shape in A.ALLOCATIONS:
        assert int(np.prod(shape)) <= B * H * T * d, (name, shape)
    # tracemalloc sees every numpy allocation of the calls (launcher, argument marshalling), not
    # only the recorded ones: the peak stays within twice the outputs' bytes.
    out_bytes = sum(int(np.prod(shape)) * 4 for _, shape in A.ALLOCATIONS)
    assert peak < 2 * out_bytes < T * T * 4, (peak, out_bytes)


def test_gradcheck_float64_through_the_emulated_kernels():
    import minigrad
    from minigrad.autograd import Function

    class FusedAttention(Function):
        def forward(self, q, k, v, key_mask=None, is_causal=False):
            self.key_mask, self.is_causal = key_mask, is_causal
            self.o, self.lse = A.attention_forward(q, k, v, key_mask, is_causal)
            return self.o

        def backward(self, g):
            q, k, v = self.inputs
            grads = A.attention_backward(q.data, k.data, v.data, self.o, self.lse,
                                         np.ascontiguousarray(g.data), self.key_mask, self.is_causal)
            return tuple(minigrad.Tensor(x) for x in grads)

    q, k, v, _, km = _inputs(1, 2, 5, 7, 16, np.float64, True, seed=13)
    km[0, 3] = False
    ts = [minigrad.Tensor(a, requires_grad=True) for a in (q, k, v)]
    for causal in (False, True):
        assert minigrad.gradcheck(partial(FusedAttention.apply, key_mask=km, is_causal=causal), ts)


# ---------------------------------------------------------------------------------------------
# Bad input is refused before any launch.

@pytest.fixture
def no_launch(monkeypatch):
    from minigrad.kernels import runtime

    def refuse(*a, **k):
        raise AssertionError("a kernel was launched for bad input")
    monkeypatch.setattr(runtime.Program, "launch", refuse)


def _good():
    q, k, v, do, km = _inputs(2, 2, 8, 9, 16, np.float32, True)
    return q, k, v, do, km


@pytest.mark.parametrize("mutate, err, words", [
    (lambda a: a.update(q=np.asfortranarray(a["q"])), ValueError, "q must be C-contiguous"),
    (lambda a: a.update(k=a["k"].astype(np.float64)), TypeError, "k has dtype float64"),
    (lambda a: a.update(q=a["q"].astype(np.int32), k=a["k"].astype(np.int32),
                        v=a["v"].astype(np.int32)), TypeError, "float32 or float64"),
    (lambda a: a.update(v=a["v"][:, :, :5].copy()), ValueError, "k and v must be"),
    (lambda a: a.update(k=a["k"][:1].copy()), ValueError, "k and v must be"),
    (lambda a: a.update(q=a["q"][0].copy()), ValueError, "must be 4-d"),
    (lambda a: a.update(q=np.zeros((2, 2, 8, 8), np.float32), k=np.zeros((2, 2, 9, 8), np.float32),
                        v=np.zeros((2, 2, 9, 8), np.float32)), ValueError, "head dims 16..128, got d=8"),
    (lambda a: a.update(q=np.zeros((2, 2, 8, 160), np.float32), k=np.zeros((2, 2, 9, 160), np.float32),
                        v=np.zeros((2, 2, 9, 160), np.float32)), ValueError, "got d=160"),
    (lambda a: a.update(key_mask=a["key_mask"].astype(np.int8)), TypeError, "key_mask must be bool"),
    (lambda a: a.update(key_mask=a["key_mask"][:, :5].copy()), ValueError, "key_mask must have shape"),
    (lambda a: a.update(q=a["q"].tolist()), TypeError, "q must be a numpy or cupy array"),
    (lambda a: a.update(scale=float("nan")), ValueError, "scale must be finite"),
])
def test_bad_input_raises_before_launch(no_launch, mutate, err, words):
    q, k, v, _, km = _good()
    args = {"q": q, "k": k, "v": v, "key_mask": km, "scale": None}
    mutate(args)
    with pytest.raises(err, match=words):
        A.attention_forward(args["q"], args["k"], args["v"], args["key_mask"], True, args["scale"])


def test_backward_checks_o_lse_do_shapes(no_launch):
    q, k, v, do, km = _good()
    lse = np.zeros(q.shape[:3], np.float32)
    with pytest.raises(ValueError, match="lse must have shape"):
        A.attention_backward(q, k, v, do, lse[..., :4].copy(), do, km)
    with pytest.raises(TypeError, match="do has dtype float64"):
        A.attention_backward(q, k, v, do, lse, do.astype(np.float64), km)
    with pytest.raises(ValueError, match="o must have shape"):
        A.attention_backward(q, k, v, do[:, :, :3].copy(), lse, do, km)


def test_every_instantiation_fits_cuda_limits():
    # Threads from the launcher's tile table, static shared memory as the emulator build measured
    # the kernels' __shared__ arrays; the emulator would refuse a launch above 48 KiB, as CUDA does.
    from minigrad.kernels import registry
    from minigrad.kernels.emulate.build import normalize

    smem = A.PROGRAM.module("emulate").lib.static_smem
    role_of = {fn: role for roles in (A.FORWARD_ROLES, A.BACKWARD_ROLES) for role, fn in roles.items()}
    names = []
    for fn, tiles in A.TILES.items():
        for ctype, D in tiles:
            name, _, nt = A._kernel(fn, role_of[fn], ctype, D)
            names.append(name)
            assert nt % 32 == 0 and 32 <= nt <= 1024, name
            assert 0 < smem[normalize(name)] <= 48 * 1024, name
    assert len(names) == 3 * 2 * len(A.HEAD_DIMS)
    assert sorted(names) == sorted(registry.instantiations("attention.cu"))


def test_bench_harness_runs_on_the_emulator_and_counts_flops():
    from minigrad.kernels import attention_bench as AB

    for Tq, Tk in ((5, 5), (3, 8), (8, 3), (1, 1)):
        brute = sum(1 for i in range(Tq) for j in range(Tk) if j <= i + Tk - Tq)
        assert AB.attended_pairs(Tq, Tk, True) == brute and AB.attended_pairs(Tq, Tk, False) == Tq * Tk
    assert AB.flops((2, 3, 4, 4, 16, False, False)) == 4 * 16 * 16 * 6
    lines = []
    rows = AB.run(np, [(1, 2, 20, 33, 16, True, True)], warmup=0, repeat=1, out=lines.append)
    assert [r["pass_"] for r in rows] == ["fwd", "fwd+bwd"] and len(lines) == 3
    assert all(r["fused_s"] > 0 and r["unfused_s"] > 0 and r["tflops"] > 0 for r in rows)


def test_bench_without_gpu_says_so_and_succeeds():
    from minigrad.kernels import attention_bench as AB
    from minigrad.kernels.validate import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: the no-GPU message does not apply")
    lines = []
    assert AB.main(out=lines.append) == 0
    assert "no GPU" in lines[0] and "unmeasured" in lines[0]


# ---------------------------------------------------------------------------------------------
# Through minigrad: F.scaled_dot_product_attention runs these kernels under MINIGRAD_KERNELS=emulate.

@pytest.fixture
def emulate_kernels(monkeypatch, fast_paths):
    """MINIGRAD_KERNELS=emulate, with minigrad.dispatch.launchers() wrapped so kernel calls are counted."""
    import types

    from minigrad import dispatch

    calls = []

    def counted(fn):
        def wrapper(*a, **k):
            calls.append(fn.__name__)
            return fn(*a, **k)
        return wrapper

    ns = types.SimpleNamespace(**vars(dispatch.launchers()))
    ns.attention_forward = counted(A.attention_forward)
    ns.attention_backward = counted(A.attention_backward)
    monkeypatch.setattr(dispatch, "launchers", lambda: ns)
    monkeypatch.setenv("MINIGRAD_KERNELS", "emulate")
    return calls


def _sdpa_grads(q, k, v, mask, causal):
    import minigrad
    import minigrad.nn.functional as F

    ts = [minigrad.Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, attn_mask=mask, is_causal=causal)
    (out * minigrad.Tensor(np.linspace(-1, 1, out.data.size).reshape(out.shape).astype(q.dtype))).sum().backward()
    return out.data, [t.grad.data if hasattr(t.grad, "data") else t.grad for t in ts]


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_uses_the_kernels_under_emulate_and_matches_the_reference_path(emulate_kernels, monkeypatch, causal):
    q, k, v, _, km = _inputs(2, 2, 9, 12, 24, np.float64, True, seed=17)
    mask = km[:, None, None, :]          # (B, 1, 1, Tk): a key-padding mask the kernel takes
    o_k, g_k = _sdpa_grads(q, k, v, mask, causal)
    assert emulate_kernels == ["attention_forward", "attention_backward"]
    monkeypatch.setenv("MINIGRAD_KERNELS", "off")
    o_r, g_r = _sdpa_grads(q, k, v, mask, causal)
    assert len(emulate_kernels) == 2     # the reference path launched nothing
    assert _rel_err(o_k, o_r) <= TOL[np.float64]
    for a, b in zip(g_k, g_r):
        assert _rel_err(a, b) <= TOL[np.float64]


def test_gradcheck_through_sdpa_with_the_emulated_kernels(emulate_kernels):
    import minigrad
    import minigrad.nn.functional as F

    q, k, v, _, km = _inputs(1, 2, 6, 6, 16, np.float64, True, seed=19)
    ts = [minigrad.Tensor(a, requires_grad=True) for a in (q, k, v)]
    mask = km[:, None, None, :]
    assert minigrad.gradcheck(lambda *t: F.scaled_dot_product_attention(*t, attn_mask=mask, is_causal=True), ts)
    assert "attention_forward" in emulate_kernels and "attention_backward" in emulate_kernels
