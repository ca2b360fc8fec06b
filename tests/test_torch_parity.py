"""Parity with PyTorch (optional; torch is never a dependency, but CI installs it to run these):
forward values and gradients of every registered op (minigrad.opinfo) under each implementation it
declares, plus compositions, nn.functional and modules, in float64, with the same upstream gradient."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0 for the parity tests")
TF = torch.nn.functional

from conftest import run_torch, use_impl

import minigrad as mg
from minigrad import Tensor, nn, opinfo
from minigrad.nn import functional as F
from minigrad.opinfo import OPS

EPS = float(np.finfo(np.float64).eps)
# Both sides compute in float64 from the same inputs, in different orders (BLAS blocking, pairwise
# sums, fused kernels) and with different libm/erf implementations (correct to about 1 ulp). At these
# sizes each element takes at most about 8 roundings of terms no larger than a few times the result's
# scale S = max|reference|, so the two differ by at most 8 eps S; ULPS = 16 doubles that. Compared
# with the scale, not elementwise-relative: an element that cancels to nearly 0 is judged by S.
# Measured: at most 4.2 eps S (attention's dq, dk through the emulated kernels).
ULPS = 16


def close_to_scale(actual, expected, err_msg=""):
    """|actual - expected| <= ULPS eps S elementwise, S = max |expected|; actual a Tensor or array."""
    actual = actual.numpy() if isinstance(actual, Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != torch's {expected.shape}"
    scale = float(np.abs(expected).max(initial=0.0))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ULPS * EPS * scale, err_msg=err_msg)



def normal(*s):
    return lambda r: r.standard_normal(s)


def positive(*s):
    return lambda r: r.uniform(0.5, 2.0, s)


def distinct(*s):
    return lambda r: (r.permutation(int(np.prod(s))).reshape(s) - np.prod(s) / 2) * 0.1


TGT = np.array([3, 0, -100, 1, 2])
IDX = np.array([[1, 4, 1], [0, 0, 3]])

# name, minigrad fn, torch fn, input makers
CASES = [
    ("add_broadcast", lambda a, b: a + b, lambda a, b: a + b, [normal(2, 3, 4), normal(3, 1)]),
    ("sub_mul_div", lambda a, b: (a - b) * a / b, lambda a, b: (a - b) * a / b, [normal(3, 4), positive(4)]),
    ("pow", lambda a, b: a ** b, torch.pow, [positive(3, 4), normal(3, 4)]),
    ("pow_scalar", lambda a: a ** 2.5, lambda a: a ** 2.5, [positive(5)]),
    ("exp_log_sqrt", lambda a: a.exp() + a.log() * a.sqrt(), lambda a: a.exp() + a.log() * a.sqrt(), [positive(6)]),
    ("tanh_sigmoid", lambda a: a.tanh() * F.sigmoid(a), lambda a: a.tanh() * torch.sigmoid(a), [normal(4, 3)]),
    ("relu_abs_clip", lambda a: F.relu(a) + a.abs() + a.clip(-0.5, 0.7),
     lambda a: torch.relu(a) + a.abs() + a.clamp(-0.5, 0.7), [distinct(4, 5)]),
    ("maximum_minimum", lambda a, b: mg.maximum(a, b) * mg.minimum(a, b),
     lambda a, b: torch.maximum(a, b) * torch.minimum(a, b), [distinct(3, 4), normal(3, 4)]),
    ("where", lambda a, b: mg.where(a.numpy() > 0, a, b), lambda a, b: torch.where(a > 0, a, b),
     [normal(3, 4), normal(4)]),
    ("sum_mean", lambda a: a.sum(axis=(0, 2)) * a.mean(axis=1).sum(),
     lambda a: a.sum(dim=(0, 2)) * a.mean(dim=1).sum(), [normal(2, 3, 4)]),
    ("max_min", lambda a: a.max(axis=1) - a.min(axis=0).sum(), lambda a: a.amax(dim=1) - a.amin(dim=0).sum(),
     [distinct(4, 5)]),
    ("var", lambda a: a.var(axis=0, ddof=1), lambda a: a.var(dim=0, unbiased=True), [normal(5, 3)]),
    ("logsumexp", lambda a: F.logsumexp(a, axis=-1), lambda a: torch.logsumexp(a, dim=-1), [normal(3, 7)]),
    ("matmul_batched", lambda a, b: a @ b, torch.matmul, [normal(2, 1, 3, 4), normal(3, 4, 5)]),
    ("matmul_vec", lambda a, b: a @ b, torch.matmul, [normal(4), normal(2, 4, 3)]),
    ("getitem", lambda a: a[np.array([0, 2, 0]), 1:] * a[:, None, -1],
     lambda a: a[torch.tensor([0, 2, 0]), 1:] * a[:, None, -1], [normal(3, 4)]),
    ("reshape_transpose", lambda a: a.reshape(4, 6).T.swapaxes(0, 1).transpose(1, 0) @ a.reshape(4, 6),
     lambda a: a.reshape(4, 6).T.transpose(0, 1).permute(1, 0) @ a.reshape(4, 6), [normal(2, 3, 4)]),
    ("concat_stack", lambda a, b: mg.concatenate([a, mg.stack([b, b], axis=1).reshape(2, 6)], axis=1),
     lambda a, b: torch.cat([a, torch.stack([b, b], dim=1).reshape(2, 6)], dim=1), [normal(2, 3), normal(2, 3)]),
    ("gelu", F.gelu, TF.gelu, [normal(4, 5)]),
    ("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"), lambda a: TF.gelu(a, approximate="tanh"), [normal(4, 5)]),
    ("softmax", lambda a: F.softmax(a, axis=1), lambda a: torch.softmax(a, dim=1), [normal(3, 4, 2)]),
    ("log_softmax", lambda a: F.log_softmax(a), lambda a: torch.log_softmax(a, dim=-1), [normal(3, 5)]),
    ("cross_entropy", lambda a: F.cross_entropy(a, TGT), lambda a: TF.cross_entropy(a, torch.from_numpy(TGT)),
     [normal(5, 4)]),
    ("cross_entropy_sum", lambda a: F.cross_entropy(a, TGT, reduction="sum"),
     lambda a: TF.cross_entropy(a, torch.from_numpy(TGT), reduction="sum"), [normal(5, 4)]),
    ("mse_loss", F.mse_loss, TF.mse_loss, [normal(3, 4), normal(3, 4)]),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, 6, w, b), lambda x, w, b: TF.layer_norm(x, (6,), w, b),
     [lambda r: r.standard_normal((2, 3, 6)) * 3 + 1, normal(6), normal(6)]),
    ("embedding", lambda w: F.embedding(IDX, w), lambda w: TF.embedding(torch.from_numpy(IDX), w), [normal(5, 3)]),
    ("linear", F.linear, TF.linear, [normal(2, 3, 4), normal(5, 4), normal(5)]),
    ("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
     lambda q, k, v: TF.scaled_dot_product_attention(q, k, v), [normal(2, 2, 3, 8), normal(2, 2, 5, 8),
                                                                 normal(2, 2, 5, 8)]),
    ("sdpa_scale", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3),
     lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, scale=0.3), [normal(1, 4, 8), normal(1, 4, 8),
                                                                           normal(1, 4, 8)]),
]


# ------------------------------------------------------------------ every registered op
# op name -> the same computation in torch, on torch tensors in the registry entry's input order
TORCH = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
    "pow": torch.pow, "maximum": torch.maximum, "minimum": torch.minimum,
    "where": lambda a, b: torch.where(a > 0, a, b),
    "neg": torch.neg, "pow_scalar": lambda a: a ** 3, "pow_half": lambda a: a ** 0.5, "exp": torch.exp,
    "log": torch.log, "sqrt": torch.sqrt, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "abs": torch.abs, "clip": lambda a: a.clamp(-0.5, 0.5), "gelu": TF.gelu,
    "gelu_tanh": lambda a: TF.gelu(a, approximate="tanh"),
    "sum": torch.sum, "sum_axis": lambda a: a.sum(1, keepdim=True), "mean_axes": lambda a: a.mean((0, 2)),
    "max_axis": lambda a: a.amax(-1), "min": torch.amin, "var": lambda a: a.var(0, correction=0),
    "logsumexp": lambda a: torch.logsumexp(a, -1),
    "reshape": lambda a: a.reshape(4, 6), "transpose": lambda a: a.permute(2, 0, 1),
    "swapaxes": lambda a: a.transpose(0, -1), "squeeze": lambda a: a.squeeze(1),
    "expand_dims": lambda a: a.unsqueeze(0), "broadcast_to": lambda a: a.expand(2, 3, 4),
    "getitem_slice": lambda a: a[1:, ::2, None, -1], "getitem_repeat": lambda a: a[torch.tensor([0, 2, 0, 0])],
    "concatenate": lambda a, b: torch.cat([a, b], 1), "stack": lambda a, b: torch.stack([a, b], -1),
    "split": lambda a: torch.split(a, [1, 2, 2], dim=1)[1],
    "matmul_2d": torch.matmul, "matmul_1d_1d": torch.matmul, "matmul_2d_1d": torch.matmul,
    "matmul_1d_3d": torch.matmul, "matmul_batched_broadcast": torch.matmul,
    "softmax": lambda a: torch.softmax(a, -1), "log_softmax": lambda a: torch.log_softmax(a, 0),
    "cross_entropy": lambda a: TF.cross_entropy(a, torch.from_numpy(opinfo._TARGET)),
    "mse_loss": TF.mse_loss, "layer_norm": lambda x, w, b: TF.layer_norm(x, (5,), w, b), "linear": TF.linear,
    "embedding": lambda w: TF.embedding(torch.from_numpy(opinfo._IDX), w),
    "sdpa": TF.scaled_dot_product_attention,
    # torch's is_causal is top-left aligned, minigrad's bottom-right: the mask spelled out
    "sdpa_causal_padded": lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(
        np.tril(np.ones((q.shape[-2], k.shape[-2]), bool), k.shape[-2] - q.shape[-2]) & opinfo._KEEP)),
    "dropout_fixed_mask": lambda a: a * torch.from_numpy(
        (np.random.default_rng(7).random(tuple(a.shape)) >= 0.3) / 0.7),    # torch's dropout draws another mask
    "gelu_mlp": lambda x, w1, b1, w2, b2: TF.linear(TF.gelu(TF.linear(x, w1, b1)), w2, b2),
    "qkv_self_attention": lambda qkv: _torch_qkv(qkv, 2, True),
    "qkv_self_attention_full": lambda qkv: _torch_qkv(qkv, 3, False, 0.4),
    # ---- issue 17's entries (minigrad/opinfo.py OPS_MATH and OPS_NN), in registry order
    # the gradient of floor division is zero almost everywhere; torch.floor_divide has no backward,
    # torch.div(rounding_mode="floor") is the same function with one
    "floor_divide": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    # torch's prod takes one dim: the (0, 2) groups moved to one axis first
    "prod_axis_zeros": lambda a: a.permute(1, 0, 2).reshape(a.shape[1], -1).prod(1),
    "norm2_axis": lambda a: torch.linalg.vector_norm(a, 2, dim=-1, keepdim=True),
    "cumsum_flat": lambda a: a.flatten().cumsum(0),          # minigrad's axis=None flattens, as NumPy
    "logcumsumexp_wide": lambda a: torch.logcumsumexp(a, 0),
    "sort_descending": lambda a: a.sort(0, descending=True).values,
    "topk_smallest": lambda a: a.topk(3, dim=0, largest=False).values,
    "softplus_beta_threshold": lambda a: TF.softplus(a, beta=2.0, threshold=3.0),
    "cross_entropy_smoothing_weights": lambda a: TF.cross_entropy(a, torch.from_numpy(opinfo._T4),
                                                                  weight=torch.from_numpy(opinfo._W4),
                                                                  label_smoothing=0.2),
    "conv1d_same_even_kernel": lambda x, w: TF.conv1d(x, w, padding="same"),
    "conv2d_groups_dilated": lambda x, w, b: TF.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(2, 1),
                                                       groups=2),
    "conv2d_same_dilated": lambda x, w: TF.conv2d(x, w, padding="same", dilation=(1, 2)),
    "conv_transpose2d_groups": lambda x, w: TF.conv_transpose2d(x, w, stride=(1, 2), groups=2, dilation=2),
    "max_pool2d_dilated_ceil": lambda x: TF.max_pool2d(x, (2, 3), 2, dilation=(2, 1), ceil_mode=True),
    "max_pool1d": lambda x: TF.max_pool1d(x, 3, 2),
    "avg_pool2d_ceil_no_pad": lambda x: TF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_pool1d": lambda x: TF.avg_pool1d(x, 2, 1, 1),
    "interpolate_nearest": lambda x: TF.interpolate(x, size=(5, 7)),
    "interpolate_bilinear": lambda x: TF.interpolate(x, size=(3, 5), mode="bilinear"),
    "interpolate_linear": lambda x: TF.interpolate(x, size=8, mode="linear"),
    "roll_flat": lambda x: torch.roll(x, 5),                   # no dims: rolls the flattened tensor, as NumPy
    "repeat": lambda x: torch.repeat_interleave(x, 2, 1),    # NumPy's repeat is torch's repeat_interleave
    "repeat_counts": lambda x: torch.repeat_interleave(x, torch.from_numpy(np.arange(x.shape[0]) % 3), 0),
    "tile": lambda x: torch.tile(x, (2, 1, 2)),
    "meshgrid": lambda a, b: torch.stack(torch.meshgrid(a, b, indexing="xy")),   # NumPy's default indexing
    # np.trace's offset has no torch.trace counterpart: the offset diagonal summed
    "trace": lambda x: torch.diagonal(x, -1).sum(),
    "take_along_axis": lambda x: torch.take_along_dim(x, torch.from_numpy(opinfo._rand_index((1, 5), x.shape[1])), 1),
    "masked_fill_tensor_value": lambda x, v: x.masked_fill(torch.from_numpy(opinfo._rand_mask(tuple(x.shape))), v),
    "getitem_bool_mask": lambda x: x[torch.from_numpy(opinfo._rand_mask(tuple(x.shape[:2])))],
    "batch_norm_eval": lambda x, w, b: TF.batch_norm(x, *map(torch.from_numpy, opinfo._running(x.shape[1])), w, b),
    # torch refuses is_causal together with attn_mask: minigrad's bottom-right causal mask is added to
    # the float mask as -inf
    "sdpa_gqa": lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=_with_causal(opinfo._GQA_BIAS),
                                                                enable_gqa=True),
}


def _with_causal(bias):
    """A (Tq, Tk) float mask with minigrad's bottom-right causal mask folded in (query i sees j <= i + Tk - Tq)."""
    tq, tk = bias.shape
    return torch.from_numpy(np.where(np.tril(np.ones((tq, tk), bool), tk - tq), bias, -np.inf))


def _torch_qkv(qkv, n_head, causal, scale=None):
    b, t, e3 = qkv.shape
    h = qkv.reshape(b, t, 3, n_head, e3 // 3 // n_head).permute(2, 0, 3, 1, 4)      # (3, B, nh, T, hs)
    y = TF.scaled_dot_product_attention(h[0], h[1], h[2], is_causal=causal, scale=scale)
    return y.transpose(1, 2).reshape(b, t, e3 // 3)


def _other_parity_cases():
    """Registry names that the other two parity files compare with torch as their own cases."""
    import test_math_torch_parity as math_parity
    import test_torch_parity_nn as nn_parity
    return {c[0] for c in math_parity.CASES} | set(nn_parity.CASES)


def test_every_registered_op_has_a_torch_reference():
    covered = set(TORCH) | _other_parity_cases()
    missing = {op.name for op in OPS if op.name not in covered}
    assert not missing, f"add a torch equivalent to TORCH for: {', '.join(sorted(missing))}"


REGISTRY_CASES = [(op, name) for op in OPS if op.name in TORCH for name in ("reference", "native", "emulate")
                  if name == "reference" or name in op.variants]


@pytest.mark.filterwarnings("ignore:Using padding='same'")     # torch's note about its own copy
@pytest.mark.parametrize("op,impl_name", REGISTRY_CASES, ids=[f"{op.name}-{n}" for op, n in REGISTRY_CASES])
def test_registered_op_matches_torch(monkeypatch, op, impl_name):
    """Forward and the gradient of every float input, for one random upstream gradient, in float64,
    under each implementation the op declares (conftest.IMPLS)."""
    use_impl(monkeypatch, impl_name)
    rng = np.random.default_rng(0)
    arrays = op.inputs(rng, np.float64, shapes=op.variant_shapes.get(impl_name))
    go = rng.standard_normal(np.shape(op.ref(*arrays)))
    ts = [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    out = op.fn(*ts)
    out.backward(Tensor(go))
    tts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    tout = TORCH[op.name](*tts)
    tout.backward(torch.from_numpy(go))
    close_to_scale(out.numpy(), tout.detach().numpy(), f"{op.name} [{impl_name}] forward")
    for i, (t, tt) in enumerate(zip(ts, tts)):
        if t.requires_grad:
            close_to_scale(t.grad.numpy(), tt.grad.numpy(), f"{op.name} [{impl_name}] gradient of input {i}")


def _run_minigrad(fn, arrays, go):
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(Tensor(go))
    return out, [t.grad if t.grad is not None else Tensor(np.zeros(t.shape)) for t in ts]


@pytest.mark.parametrize("name,fn,tfn,makers", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_torch(name, fn, tfn, makers):
    rng = np.random.default_rng(0)
    arrays = [m(rng) for m in makers]
    probe = fn(*[Tensor(a.copy()) for a in arrays])
    go = rng.standard_normal(probe.shape)
    out, grads = _run_minigrad(fn, arrays, go)
    tout, tgrads = run_torch(tfn, arrays, go)
    close_to_scale(out, tout, f"{name} forward")
    for i, (g, tg) in enumerate(zip(grads, tgrads)):
        close_to_scale(g, tg, f"{name} grad of input {i}")


def test_causal_and_masked_attention_match_torch_with_an_explicit_bottom_right_mask():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    keep = np.ones((2, 1, 1, 5), bool)
    keep[1, ..., 3:] = False
    # minigrad's is_causal is bottom-right aligned (query i sees keys j <= i + Tk - Tq); torch's is
    # top-left, so torch gets the same mask spelled out
    allowed = np.tril(np.ones((3, 5), bool), k=5 - 3) & keep
    go = rng.standard_normal((2, 2, 3, 4))
    out, grads = _run_minigrad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                                                              is_causal=True), [q, k, v], go)
    tout, tgrads = run_torch(lambda q, k, v: TF.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.from_numpy(allowed)), [q, k, v], go)
    close_to_scale(out, tout)
    for g, tg in zip(grads, tgrads):
        close_to_scale(g, tg)


def test_multihead_attention_matches_torch_module():
    rng = np.random.default_rng(2)
    e, h = 8, 2
    m = nn.MultiheadAttention(e, h, dtype=np.float64, rng=rng)
    tm = torch.nn.MultiheadAttention(e, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        tm.in_proj_weight.copy_(torch.from_numpy(np.concatenate([m.q_proj.weight.numpy(), m.kv_proj.weight.numpy()])))
        tm.in_proj_bias.copy_(torch.from_numpy(np.concatenate([m.q_proj.bias.numpy(), m.kv_proj.bias.numpy()])))
        tm.out_proj.weight.copy_(torch.from_numpy(m.out_proj.weight.numpy()))
        tm.out_proj.bias.copy_(torch.from_numpy(m.out_proj.bias.numpy()))
    q, kv = rng.standard_normal((2, 3, e)), rng.standard_normal((2, 6, e))
    pad = np.zeros((2, 6), bool)
    pad[0, 4:] = True
    go = rng.standard_normal((2, 3, e))
    xq, xkv = Tensor(q, requires_grad=True), Tensor(kv, requires_grad=True)
    out = m(xq, xkv, key_padding_mask=pad)
    out.backward(Tensor(go))
    tq, tkv = (torch.tensor(a, requires_grad=True) for a in (q, kv))
    tout, _ = tm(tq, tkv, tkv, key_padding_mask=torch.from_numpy(pad), need_weights=False)
    tout.backward(torch.from_numpy(go))
    close_to_scale(out, tout.detach().numpy())
    close_to_scale(xq.grad, tq.grad.numpy())
    close_to_scale(xkv.grad, tkv.grad.numpy())
    tw = tm.in_proj_weight.grad.numpy()
    close_to_scale(m.q_proj.weight.grad, tw[:e])
    close_to_scale(m.kv_proj.weight.grad, tw[e:])


def test_layer_norm_and_linear_modules_match_torch():
    rng = np.random.default_rng(3)
    ln, lin = nn.LayerNorm(6, eps=1e-5, dtype=np.float64), nn.Linear(6, 4, dtype=np.float64, rng=rng)
    tln, tlin = torch.nn.LayerNorm(6, dtype=torch.float64), torch.nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        tlin.weight.copy_(torch.from_numpy(lin.weight.numpy()))
        tlin.bias.copy_(torch.from_numpy(lin.bias.numpy()))
    x = rng.standard_normal((3, 6)) * 4
    y = lin(ln(Tensor(x))).tanh().sum()
    y.backward()
    ty = tlin(tln(torch.from_numpy(x))).tanh().sum()
    ty.backward()
    assert math.isclose(y.item(), ty.item(), rel_tol=ULPS * np.finfo(np.float64).eps)
    for p, tp in [(ln.weight, tln.weight), (ln.bias, tln.bias), (lin.weight, tlin.weight), (lin.bias, tlin.bias)]:
        close_to_scale(p.grad, tp.grad.numpy())
