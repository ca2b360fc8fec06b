"""Half-precision tensors reach the version-2 kernels through minigrad's dispatch (issue 15):
AttentionKernel, QKVAttentionKernel and LayerNormKernel take float16/bfloat16 arrays where
kernels/attention_v2.cu and kernels/layernorm_v2.cu exist, and autocast hands the attention kernels
real half arrays (on "cuda", and on the CPU under MINIGRAD_KERNELS=emulate, which runs here).

What is checked: the variant chosen (dispatch.trace) and the dtype each launcher received; the
op's forward and backward equal the launchers' own outputs bit for bit (so the element-wise bounds
that tests/test_kernels_half.py proves for the launchers hold for the ops); and the ops against the
float64 reference on the same half values within those bounds (kernels/attention.py
attention_v2_bounds, kernels/layernorm.py layernorm_v2_bounds: from the half type's unit roundoff
u = eps/2 and the reduction lengths, times 1 + 8u for second-order terms).
"""
import shutil
import types

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn.functional as F
from minigrad import backend, dispatch
from minigrad.kernels import attention as A
from minigrad.kernels import dtypes
from minigrad.kernels import layernorm as L
from minigrad.ops.attention import AttentionKernel
from minigrad.ops.fused import QKVAttentionKernel
from minigrad.ops.normalization import LayerNormKernel

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CPU emulator needs a C++ compiler")

HALF = [pytest.param(np.dtype(np.float16), id="float16"), pytest.param(backend.bfloat16(), id="bfloat16")]
SECOND_ORDER = 8


def _f64(a):
    return dtypes.to_float64(np.asarray(a))


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def _within(got, ref, bound, u, what):
    err = np.abs(_f64(got) - ref)
    limit = bound * (1 + SECOND_ORDER * u)
    assert np.all(err <= limit), f"{what}: max ratio {(err / np.maximum(limit, 1e-300)).max():.2f}"


@pytest.fixture
def emulated(monkeypatch, fast_paths):
    """MINIGRAD_KERNELS=emulate, every launcher call recorded as (name, dtype of its first array)."""
    calls = []
    real = dispatch.launchers()

    def recorded(name):
        fn = getattr(real, name)

        def wrapper(*a, **k):
            calls.append((name, a[0].dtype))
            return fn(*a, **k)
        return wrapper

    ns = types.SimpleNamespace(**{n: recorded(n) for n in vars(real)})
    monkeypatch.setattr(dispatch, "launchers", lambda: ns)
    monkeypatch.setenv("MINIGRAD_KERNELS", "emulate")
    return calls


def _half(rng, shape, dtype):
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


# --------------------------------------------------------------------------- which variant takes what

def test_kernel_variants_take_half_types_where_a_version_2_kernel_exists(monkeypatch, fast_paths):
    bf = backend.bfloat16()
    q16 = np.zeros((1, 2, 5, 8), np.float16)
    monkeypatch.setenv("MINIGRAD_KERNELS", "emulate")
    assert AttentionKernel.takes(q16, q16, q16)                           # d = 8: version 2 pads it
    assert AttentionKernel.takes(*(q16.astype(bf),) * 3)
    assert not AttentionKernel.takes(*(q16.astype(np.float32),) * 3)      # version 1 needs d >= 16
    assert AttentionKernel.takes(*(np.zeros((1, 2, 5, 16), np.float32),) * 3)
    assert not AttentionKernel.takes(q16, q16, q16.astype(bf))            # mixed dtypes
    assert not AttentionKernel.takes(*(np.zeros((1, 2, 5, 130), np.float16),) * 3)
    assert QKVAttentionKernel.takes(np.zeros((2, 5, 48), np.float16), 2, True, None)      # hs = 8
    assert not QKVAttentionKernel.takes(np.zeros((2, 5, 48), np.float32), 2, True, None)
    x = np.zeros((3, 8192), bf)
    assert LayerNormKernel.takes(x, np.ones(8192, bf), np.zeros(8192, bf))
    assert not LayerNormKernel.takes(x, np.ones(8192, np.float32))        # y would be float32: the reference's
    assert not LayerNormKernel.takes(np.zeros((3, 8193), bf))             # wider than version 2's rows
    assert LayerNormKernel.takes(np.zeros((3, 9000), np.float32))         # version 1 has no width limit
    assert not LayerNormKernel.takes(np.zeros((3, 4), np.int32))
    monkeypatch.setenv("MINIGRAD_KERNELS", "auto")                        # "cpu" without emulate: no kernels
    assert not AttentionKernel.takes(q16, q16, q16) and not LayerNormKernel.takes(x)


# --------------------------------------------------------------------------- attention

@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_on_half_tensors_runs_version_2_and_matches_float64(emulated, dtype, causal):
    rng = np.random.default_rng(1)
    B, H, Tq, Tk, d = 2, 2, 7, 20, 40
    q, k, v, do = _half(rng, (B, H, Tq, d), dtype), _half(rng, (B, H, Tk, d), dtype), \
        _half(rng, (B, H, Tk, d), dtype), _half(rng, (B, H, Tq, d), dtype)
    km = rng.random((B, Tk)) > 0.3
    km[:, -1] = True
    ts = [mg.Tensor(a, requires_grad=True) for a in (q, k, v)]
    with dispatch.trace() as seen:
        out = F.scaled_dot_product_attention(*ts, attn_mask=km[:, None, None, :], is_causal=causal)
        out.backward(mg.Tensor(do))
    assert "AttentionKernel" in seen and out.dtype == dtype
    assert [c for c in emulated] == [("attention_forward", dtype), ("attention_backward", dtype)]
    # the op is the launchers, bit for bit
    o, lse = A.attention_forward(q, k, v, km, causal)
    assert _bits(out.numpy()) == _bits(o)
    for t, g in zip(ts, A.attention_backward(q, k, v, o, lse, do, km, causal)):
        assert t.grad.dtype == dtype and _bits(t.grad.numpy()) == _bits(g)
    # and within version 2's bounds of the float64 reference on the same values
    u = float(np.finfo(np.float16).eps if dtype == np.float16 else 2.0 ** -7) / 2
    i64 = {"q": _f64(q), "k": _f64(k), "v": _f64(v), "key_mask": km, "is_causal": causal}
    o_ref, lse_ref = A.attention_forward_ref(i64["q"], i64["k"], i64["v"], km, causal)
    _within(out.numpy(), np.nan_to_num(o_ref), A.attention_v2_bounds(i64, dtype)["o"], u, "o")
    i64.update(do=_f64(do), o=_f64(o), lse=lse.astype(np.float64))    # the backward from the forward's own o, lse
    refs = A.attention_backward_ref(i64["q"], i64["k"], i64["v"], i64["o"], i64["lse"], i64["do"], km, causal)
    bounds = A.attention_v2_bounds(i64, dtype, backward=True)
    for name, t, ref in zip(("dq", "dk", "dv"), ts, refs):
        _within(t.grad.numpy(), ref, bounds[name], u, name)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_autocast_hands_the_attention_kernel_half_arrays(emulated, dtype):
    """Under autocast, float32 q, k, v reach the kernel as half arrays (version 2) and the result
    comes back float32: equal bit for bit to the same call on half tensors, gradients included."""
    half = backend.as_dtype(dtype)
    rng = np.random.default_rng(2)
    arrays = [_half(rng, (1, 2, 9, 32), half) for _ in range(3)]
    do = _half(rng, (1, 2, 9, 32), half)
    f32 = [mg.Tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    with mg.autocast(dtype):
        out = F.scaled_dot_product_attention(*f32, is_causal=True)
    out.backward(mg.Tensor(do.astype(np.float32)))
    assert out.dtype == np.float32 and all(t.grad.dtype == np.float32 for t in f32)
    assert emulated == [("attention_forward", half), ("attention_backward", half)]
    hs = [mg.Tensor(a, requires_grad=True) for a in arrays]
    ref = F.scaled_dot_product_attention(*hs, is_causal=True)
    ref.backward(mg.Tensor(do))
    assert _bits(out.numpy()) == _bits(ref.numpy().astype(np.float32))
    for a, b in zip(f32, hs):
        assert _bits(a.grad.numpy()) == _bits(b.grad.numpy().astype(np.float32))


def test_autocast_keeps_rounding_in_float32_storage_where_no_kernel_takes_the_call(emulated):
    """A float bias (which the kernels do not take) keeps autocast's float32-storage rounding."""
    rng = np.random.default_rng(3)
    q, k, v = (mg.Tensor(rng.standard_normal((1, 1, 4, 16)).astype(np.float32)) for _ in range(3))
    bias = mg.Tensor(rng.standard_normal((4, 4)).astype(np.float32))
    with mg.autocast("bfloat16"), dispatch.trace() as seen:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert out.dtype == np.float32 and emulated == [] and "AttentionKernel" not in seen


@pytest.mark.parametrize("dtype", HALF)
def test_qkv_attention_on_half_tensors_equals_sdpa_per_head(emulated, dtype):
    rng = np.random.default_rng(4)
    B, T, nh, hs = 2, 9, 2, 24
    qkv = _half(rng, (B, T, 3 * nh * hs), dtype)
    g = _half(rng, (B, T, nh * hs), dtype)
    x = mg.Tensor(qkv, requires_grad=True)
    with dispatch.trace() as seen:
        y = F.qkv_self_attention(x, nh, is_causal=True)
        y.backward(mg.Tensor(g))
    assert "QKVAttentionKernel" in seen and y.dtype == dtype and x.grad.dtype == dtype
    assert {c[1] for c in emulated} == {dtype}
    heads = [mg.Tensor(np.ascontiguousarray(h), requires_grad=True)
             for h in qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)]
    o = F.scaled_dot_product_attention(*heads, is_causal=True)          # (B, nh, T, hs)
    o.backward(mg.Tensor(np.ascontiguousarray(g.reshape(B, T, nh, hs).transpose(0, 2, 1, 3))))
    assert _bits(y.numpy()) == _bits(np.ascontiguousarray(o.numpy().transpose(0, 2, 1, 3)).reshape(B, T, -1))
    dqkv = np.stack([h.grad.numpy() for h in heads]).transpose(1, 3, 0, 2, 4).reshape(B, T, -1)
    assert _bits(x.grad.numpy()) == _bits(dqkv)


def test_gpt_under_autocast_runs_the_half_attention_kernel_and_tracks_the_rounding_path(emulated, monkeypatch):
    """The GPT's fused attention under autocast on the emulated device: version 2 on bfloat16 arrays,
    layernorm in float32 (autocast's float32 list). Against the same step with the kernels off
    (float32 storage holding bfloat16 values, P kept in float32), the loss moves by the rounding
    of P alone: within 8 eps (1 + loss), the tolerance of tests/test_amp.py."""
    from minigrad.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=32, dropout=0.0, bias=False)
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 11, (2, 8)), rng.integers(0, 11, (2, 8))

    def loss_and_grads():
        model = GPT(cfg, seed=0)
        with mg.autocast("bfloat16"):
            loss = model(x, y)[1]
        loss.backward()
        return loss.item(), [p.grad.numpy() for p in model.parameters()]

    with dispatch.trace() as seen:
        l_k, g_k = loss_and_grads()
    assert "QKVAttentionKernel" in seen and "LayerNormKernel" in seen
    assert ("attention_forward", backend.bfloat16()) in emulated
    assert {c[1] for c in emulated if c[0].startswith("layernorm")} == {np.dtype(np.float32)}
    monkeypatch.setenv("MINIGRAD_KERNELS", "off")
    l_r, g_r = loss_and_grads()
    assert l_k != l_r and abs(l_k - l_r) <= 8 * 2.0 ** -7 * (1 + abs(l_r))
    assert all(a.dtype == np.float32 for a in g_k)


# --------------------------------------------------------------------------- layernorm

@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_on_half_tensors_runs_version_2_and_matches_float64(emulated, dtype, affine):
    rng = np.random.default_rng(6)
    N, C = 9, 96
    x = (_half(rng, (N, C), np.float32) * 2 + 0.5).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(C)).astype(np.float32).astype(dtype) if affine else None
    b = _half(rng, (C,), dtype) if affine else None
    dy = _half(rng, (N, C), dtype)
    xt = mg.Tensor(x.reshape(3, 3, C), requires_grad=True)
    wt, bt = (mg.Tensor(a, requires_grad=True) if a is not None else None for a in (w, b))
    with dispatch.trace() as seen:
        out = F.layer_norm(xt, C, wt, bt)
        out.backward(mg.Tensor(dy.reshape(3, 3, C)))
    assert "LayerNormKernel" in seen and out.dtype == dtype
    assert [c[0] for c in emulated] == ["layernorm_forward", "layernorm_backward"] and {c[1] for c in emulated} == {dtype}
    y, mean, rstd = L.layernorm_forward(x, w, b, 1e-5)
    assert _bits(out.numpy().reshape(N, C)) == _bits(y)
    dx, dw, db = L.layernorm_backward(dy, x, w, mean, rstd, bias=affine)
    assert _bits(xt.grad.numpy().reshape(N, C)) == _bits(dx)
    if affine:
        assert _bits(wt.grad.numpy()) == _bits(dw) and _bits(bt.grad.numpy()) == _bits(db)
    u = float(np.finfo(np.float16).eps if dtype == np.float16 else 2.0 ** -7) / 2
    i64 = {"x": _f64(x), "weight": _f64(w) if affine else None, "bias": _f64(b) if affine else None, "eps": 1e-5}
    y_ref = L.layernorm_forward_ref(i64["x"], i64["weight"], i64["bias"], 1e-5)[0]
    _within(out.numpy().reshape(N, C), y_ref, L.layernorm_v2_bounds(i64, dtype)["y"], u, "y")
    i64.update(dy=_f64(dy), mean=mean.astype(np.float64), rstd=rstd.astype(np.float64))
    ref = L.layernorm_backward_ref(i64["dy"], i64["x"], i64["weight"], i64["mean"], i64["rstd"])
    bounds = L.layernorm_v2_bounds(i64, dtype, backward=True)
    _within(xt.grad.numpy().reshape(N, C), ref[0], bounds["dx"], u, "dx")
    if affine:
        _within(wt.grad.numpy(), ref[1], bounds["dweight"], u, "dweight")
        _within(bt.grad.numpy(), ref[2], bounds["dbias"], u, "dbias")


def test_layer_norm_with_float32_parameters_on_half_input_keeps_the_reference(emulated):
    """bfloat16 x with float32 weight promotes to float32 in the reference; the kernel would return
    bfloat16, so the reference runs (the result's dtype does not depend on the variant)."""
    bf = backend.bfloat16()
    x = mg.Tensor(np.random.default_rng(7).standard_normal((4, 16)).astype(np.float32).astype(bf))
    with dispatch.trace() as seen:
        out = F.layer_norm(x, 16, mg.Tensor(np.ones(16, np.float32)), mg.Tensor(np.zeros(16, np.float32)))
    assert "LayerNormKernel" not in seen and emulated == [] and out.dtype == np.float32


def test_half_kernels_need_a_gpu_that_has_them(monkeypatch, fast_paths):
    """Version 2 needs compute capability 8.0 on a GPU; a device without a CuPy GPU behind it (the
    strict stand-in) gets no half kernel even with the kernels on, and runs the reference."""
    from minigrad.ops.attention import half_kernels_run_on

    monkeypatch.setattr(backend, "_strict_cuda", True)
    monkeypatch.setenv("MINIGRAD_KERNELS", "auto")
    q = mg.Tensor(np.zeros((1, 1, 4, 16), np.float16), device="cuda")
    assert half_kernels_run_on(np.zeros(1, np.float16)) and not half_kernels_run_on(q.data)
    assert not AttentionKernel.takes(q.data, q.data, q.data)
    assert AttentionKernel.takes(*(q.astype(np.float32).data,) * 3)       # version 1 asks for no capability
    assert not LayerNormKernel.takes(q.data.reshape(4, 16))
