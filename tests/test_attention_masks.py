"""scaled_dot_product_attention with a float additive attn_mask and with grouped-query attention
(enable_gqa), and which implementation runs them: the reference op takes both; the CUDA kernel and
native CPU variants refuse a float mask (and the kernel refuses GQA), so the reference runs.
The registry entries sdpa_float_mask and sdpa_gqa carry gradcheck and gradgradcheck."""
import numpy as np
import pytest
from conftest import assert_close, strict_is_on

import minigrad as mg
from minigrad import Tensor, dispatch
from minigrad.nn import functional as F
from minigrad.ops.attention import AttentionKernel, AttentionNative

SDPA = F.scaled_dot_product_attention


def qkv(rng, hq=2, hkv=2, tq=3, tk=5, d=4, b=2):
    return (rng.standard_normal((b, hq, tq, d)), rng.standard_normal((b, hkv, tk, d)),
            rng.standard_normal((b, hkv, tk, d)))


def run(fn, arrays, g):
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(Tensor(g))
    return out.numpy(), [t.grad.numpy() for t in ts]


def test_a_float_mask_of_zeros_and_minus_inf_equals_the_bool_mask():
    rng = np.random.default_rng(0)
    q, k, v = qkv(rng)
    keep = rng.random((2, 1, 3, 5)) > 0.3
    keep[..., 0] = True
    g = rng.standard_normal((2, 2, 3, 4))
    bias = np.where(keep, 0.0, -np.inf)
    out_b, grads_b = run(lambda q, k, v: SDPA(q, k, v, attn_mask=keep), [q, k, v], g)
    out_f, grads_f = run(lambda q, k, v: SDPA(q, k, v, attn_mask=bias), [q, k, v], g)
    assert_close(out_f, out_b)
    for a, b in zip(grads_f, grads_b):
        assert_close(a, b)


def test_a_row_masked_entirely_gives_zeros_and_finite_gradients():
    rng = np.random.default_rng(1)
    q, k, v = qkv(rng, b=1)
    bias = rng.standard_normal((3, 5))
    bias[1] = -np.inf                                       # query 1 may attend no key
    m = Tensor(bias, requires_grad=True)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = SDPA(*ts, attn_mask=m)
    assert np.all(out.numpy()[:, :, 1] == 0.0) and np.all(np.isfinite(out.numpy()))
    out.sum().backward()
    for t in ts + [m]:
        assert np.all(np.isfinite(t.grad.numpy()))
    assert np.all(m.grad.numpy()[1] == 0.0)                  # masked scores get no gradient
    with mg.enable_grad():                                    # and the create_graph path agrees
        gq, gm = mg.grad(SDPA(*ts, attn_mask=m).sum(), [ts[0], m], create_graph=True)
    assert_close(gq, ts[0].grad.numpy())
    assert_close(gm, m.grad.numpy())


def test_the_mask_gradient_sums_over_the_dims_it_was_broadcast_along():
    """d loss / d bias for a (Tq, Tk) bias shared by every batch and head: the sum of the per-(b, h)
    score gradients, each p ∘ (dp − rowsum(dp ∘ p)), computed here in NumPy."""
    rng = np.random.default_rng(2)
    q, k, v = qkv(rng)
    bias = rng.standard_normal((3, 5))
    g = rng.standard_normal((2, 2, 3, 4))
    _, grads = run(lambda q, k, v, m: SDPA(q, k, v, attn_mask=m), [q, k, v, bias], g)
    s = q @ k.swapaxes(-1, -2) / 2.0 + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dp = g @ v.swapaxes(-1, -2)
    want = (p * (dp - (dp * p).sum(-1, keepdims=True))).sum(axis=(0, 1))
    assert_close(grads[3], want)


def test_a_float32_query_with_a_float64_mask_stays_float32():
    rng = np.random.default_rng(3)
    q, k, v = (Tensor(a.astype(np.float32)) for a in qkv(rng))
    assert SDPA(q, k, v, attn_mask=rng.standard_normal((3, 5))).dtype == np.float32


def test_grouped_query_attention_equals_repeating_the_key_value_heads():
    rng = np.random.default_rng(4)
    q, k, v = qkv(rng, hq=6, hkv=2)
    g = rng.standard_normal((2, 6, 3, 4))
    out, grads = run(lambda q, k, v: SDPA(q, k, v, is_causal=True, enable_gqa=True), [q, k, v], g)
    rep = lambda a: np.repeat(a, 3, axis=1)                  # query head h reads kv head h // 3
    want, wgrads = run(lambda q, k, v: SDPA(q, k, v, is_causal=True), [q, rep(k), rep(v)], g)
    assert out.shape == (2, 6, 3, 4)
    assert_close(out, want)
    assert_close(grads[0], wgrads[0])
    for i in (1, 2):                                         # a shared head gets its group's summed gradient
        assert_close(grads[i], wgrads[i].reshape(2, 2, 3, 5, 4).sum(axis=2))


@pytest.mark.parametrize("mask_shape", [(6, 3, 5), (2, 1, 3, 5), (2, 6, 3, 5), (3, 5)])
def test_grouped_query_attention_with_masks_of_every_head_layout(mask_shape):
    rng = np.random.default_rng(5)
    q, k, v = qkv(rng, hq=6, hkv=3)
    keep = rng.random(mask_shape) > 0.3
    bias = rng.standard_normal(mask_shape)
    rep = lambda a: np.repeat(a, 2, axis=1)                
    for m in (keep, bias):
        got = SDPA(Tensor(q), Tensor(k), Tensor(v), attn_mask=m, enable_gqa=True)
        want = SDPA(Tensor(q), Tensor(rep(k)), Tensor(rep(v)), attn_mask=m)
        assert_close(got, want.numpy())


def test_bad_masks_and_head_counts_say_what_is_wrong():
    rng = np.random.default_rng(6)
    q, k, v = (Tensor(a) for a in qkv(rng, hq=4, hkv=3))
    with pytest.raises(ValueError, match=r"query heads \(4\) to be a multiple of the key/value heads"):
        SDPA(q, k, v, enable_gqa=True)
    q2, k2, v2 = (Tensor(a) for a in qkv(rng))
    with pytest.raises(TypeError, match="boolean .* or float"):
        SDPA(q2, k2, v2, attn_mask=np.ones((3, 5), np.int64))
    with pytest.raises(ValueError, match=r"attn_mask shape \(4, 5\) does not broadcast"):
        SDPA(q2, k2, v2, attn_mask=np.zeros((4, 5)))


# ------------------------------------------------------------------ which implementation takes what

def test_the_variants_refuse_a_float_mask_and_the_kernel_refuses_grouped_heads():
    rng = np.random.default_rng(7)
    q, k, v = (a.astype(np.float32) for a in qkv(rng, d=16))
    bias = np.zeros((3, 5), np.float32)
    assert not AttentionNative.takes(q, k, v, bias)
    assert not AttentionKernel.takes(q, k, v, bias)
    q5, k5 = q.reshape(2, 1, 2, 3, 16), k[:, :, None]        # GQA as F builds it: batch dims broadcast
    assert not AttentionKernel.takes(q5, k5, k5)
    assert not AttentionKernel.takes(q, k[:, :1], v[:, :1])  # unequal head counts, even when 4-D


def test_a_float_mask_runs_the_reference_even_with_native_code_on(native_on):
    rng = np.random.default_rng(8)
    q, k, v = qkv(rng)
    bias = rng.standard_normal((2, 1, 3, 5))
    g = rng.standard_normal((2, 2, 3, 4))
    fn = lambda q, k, v, m: SDPA(q, k, v, attn_mask=m)     
    with dispatch.trace() as chosen:
        out, grads = run(fn, [q, k, v, bias], g)
    assert "AttentionNative" not in chosen
    with mg.impl("reference"):
        want, wgrads = run(fn, [q, k, v, bias], g)
    np.testing.assert_array_equal(out, want)
    for a, b in zip(grads, wgrads):
        assert_close(a, b)


def test_grouped_query_attention_without_a_mask_runs_natively_and_matches(native_on):
    """The native variant broadcasts the batch dims (its softmax is per row), so GQA without a mask
    takes it; its values equal the reference's to a few roundings per row of the softmax."""
    if strict_is_on():
        pytest.skip("the native variant takes NumPy arrays, which the strict backend's are not")
    rng = np.random.default_rng(9)
    q, k, v = qkv(rng, hq=4, hkv=2, tq=5, tk=5)
    g = rng.standard_normal((2, 4, 5, 4))
    fn = lambda q, k, v: SDPA(q, k, v, is_causal=True, enable_gqa=True) 
    with dispatch.trace() as chosen:
        out, grads = run(fn, [q, k, v], g)
    assert "AttentionNative" in chosen
    with mg.impl("reference"):
        want, wgrads = run(fn, [q, k, v], g)
    assert_close(out, want, ulps=256)
    for a, b in zip(grads, wgrads):
        assert_close(a, b, ulps=256)
