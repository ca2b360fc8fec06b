"""minigrad.nn: Module bookkeeping, state_dict, train/eval, the layers and MultiheadAttention."""
import math

import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
from minigrad import Tensor, backend, nn
from minigrad.nn import functional as F


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = nn.Linear(3, 3, dtype=np.float64, rng=rng)
        self.norm = nn.LayerNorm(3, dtype=np.float64)
        self.scale = nn.Parameter(np.ones(1))
        self.not_a_param = Tensor(np.ones(2))        # a plain Tensor attribute is not registered
        self.config = {"width": 4}

    def forward(self, x):
        return self.norm(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self, rng=None, tie=False):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.emb = nn.Embedding(5, 3, dtype=np.float64, rng=rng)
        self.blocks = nn.ModuleList([Block(rng), Block(rng)])
        self.head = nn.Linear(3, 5, bias=False, dtype=np.float64, rng=rng)
        if tie:
            self.proj = nn.Linear(3, 5, bias=False, dtype=np.float64, rng=rng)
            self.proj.weight = self.emb.weight        # tied: one Parameter under two names


# ------------------------------------------------------------------ registration

def test_parameters_and_submodules_register_by_attribute():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    # a module's own parameters first, then its submodules' in assignment order (as PyTorch)
    assert names == ["emb.weight",
                     "blocks.0.scale", "blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.norm.weight",
                     "blocks.0.norm.bias",
                     "blocks.1.scale", "blocks.1.fc.weight", "blocks.1.fc.bias", "blocks.1.norm.weight",
                     "blocks.1.norm.bias", "head.weight"]
    assert len(net.parameters()) == len(names)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert net.num_parameters() == 15 + 2 * (9 + 3 + 3 + 3 + 1) + 15
    assert [type(m).__name__ for m in net.children()] == ["Embedding", "ModuleList", "Linear"]
    # rebinding an attribute to a non-parameter unregisters it
    net.blocks[0].scale = None
    assert "blocks.0.scale" not in dict(net.named_parameters())


def test_module_without_super_init_says_so():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(2))
    with pytest.raises(RuntimeError, match="super\\(\\).__init__"):
        Bad()


def test_tied_weights_are_listed_once_but_saved_under_each_name():
    net = Net(tie=True)
    params = net.parameters()
    assert len(params) == len({id(p) for p in params})
    assert "proj.weight" not in dict(net.named_parameters())
    sd = net.state_dict()
    assert "proj.weight" in sd and np.array_equal(sd["proj.weight"], sd["emb.weight"])


# ------------------------------------------------------------------ state_dict

def test_state_dict_round_trip():
    a, b = Net(np.random.default_rng(1)), Net(np.random.default_rng(2))
    sd = a.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())       # host arrays, whatever the device
    assert b.load_state_dict(sd) == ([], [])
    x = np.array([[0, 3, 4]])
    h = a.emb(x)
    for blk in a.blocks:
        h = blk(h)
    h2 = b.emb(x)
    for blk in b.blocks:
        h2 = blk(h2)
    assert_close(h2, h.numpy())
    # the loaded arrays are copies: changing the dict afterwards does not change the model
    sd["head.weight"][...] = 0.0
    assert np.any(b.head.weight.numpy() != 0)


def test_load_state_dict_strict_missing_and_unexpected_keys():
    net = Net()
    sd = net.state_dict()
    del sd["head.weight"]
    sd["extra.bias"] = np.zeros(7)
    with pytest.raises(KeyError, match=r"missing keys: head.weight \(expected shape \(5, 3\)\).*"
                                       r"unexpected keys: extra.bias \(shape \(7,\)\)"):
        net.load_state_dict(sd)
    missing, unexpected = Net().load_state_dict(sd, strict=False)
    assert missing == ["head.weight"] and unexpected == ["extra.bias"]


def test_load_state_dict_wrong_shape_names_key_and_both_shapes():
    net = Net()
    sd = net.state_dict()
    sd["blocks.1.fc.weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"blocks\.1\.fc\.weight.*\(3, 4\).*\(3, 3\)"):
        net.load_state_dict(sd)
    with pytest.raises(ValueError, match=r"blocks\.1\.fc\.weight"):
        net.load_state_dict(sd, strict=False)


def test_load_state_dict_keeps_the_parameter_dtype():
    lin = nn.Linear(2, 2)                      # float32 parameters
    lin.load_state_dict({"weight": np.ones((2, 2)), "bias": np.zeros(2)})
    assert lin.weight.dtype == np.float32 and lin.weight.numpy().tolist() == [[1, 1], [1, 1]]


# ------------------------------------------------------------------ modes, zero_grad, devices

def test_train_eval_propagate_and_dropout_follows_them():
    drop = nn.Dropout(0.25, generator=np.random.default_rng(0))
    net = nn.Sequential(nn.Linear(4, 4), drop)
    assert net.training and drop.training
    net.eval()
    assert not net.training and not drop.training
    x = Tensor(np.ones((200, 50), np.float32))
    assert drop(x) is x                       # identity in eval mode
    net.train()
    y = drop(x).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02      # 10,000 draws: 4 sigma ~ 0.017
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=np.finfo(np.float32).eps * 4)


def test_dropout_with_a_seeded_generator_is_reproducible_and_gradient_uses_the_mask():
    x = Tensor(np.ones((6, 7)), requires_grad=True)
    y1 = F.dropout(x, 0.5, True, np.random.default_rng(3))
    y2 = F.dropout(x, 0.5, True, np.random.default_rng(3))
    assert np.array_equal(y1.numpy(), y2.numpy())
    y1.sum().backward()
    assert np.array_equal(x.grad.numpy(), y1.numpy())        # d(mask*x/(1-p))/dx = mask/(1-p)
    assert F.dropout(x, 1.0, True).numpy().sum() == 0
    assert F.dropout(x, 0.5, False) is x


def test_zero_grad_clears_every_parameter():
    net = Net()
    h = net.emb(np.array([[1, 2]]))
    for blk in net.blocks:
        h = blk(h)
    net.head(h).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_module_to_cpu_is_a_no_op_and_cuda_needs_a_gpu():
    net = Net()
    before = net.state_dict()
    assert net.to("cpu") is net
    assert all(np.array_equal(before[k], v) for k, v in net.state_dict().items())
    if not backend.cuda_available():
        with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
            net.to("cuda")


# ------------------------------------------------------------------ layers

def test_linear_matches_numpy_and_pytorch_init_bounds():
    rng = np.random.default_rng(0)
    lin = nn.Linear(16, 3, dtype=np.float64, rng=rng)
    bound = 1 / math.sqrt(16)
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert w.shape == (3, 16) and b.shape == (3,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound and np.abs(w).max() > bound / 2
    x = rng.standard_normal((2, 5, 16))
    assert_close(lin(Tensor(x)), x @ w.T + b)
    assert nn.Linear(4, 2, bias=False).bias is None
    assert lin.weight.dtype == np.float64 and nn.Linear(2, 2).weight.dtype == np.float32


def test_embedding_lookup_and_scatter_add_gradient():
    emb = nn.Embedding(4, 2, dtype=np.float64, rng=np.random.default_rng(0))
    idx = np.array([[1, 3], [1, 1]])
    out = emb(Tensor(idx))
    assert out.shape == (2, 2, 2)
    assert_close(out, emb.weight.numpy()[idx])
    out.sum().backward()
    assert emb.weight.grad.numpy()[:, 0].tolist() == [0.0, 3.0, 0.0, 1.0]


def test_layer_norm_module_matches_numpy():
    rng = np.random.default_rng(0)
    ln = nn.LayerNorm((2, 3), eps=1e-6, dtype=np.float64)
    assert ln.weight.numpy().tolist() == [[1.0] * 3] * 2 and not ln.bias.numpy().any()
    ln.weight.data = ln.weight._xp.asarray(rng.standard_normal((2, 3)))
    ln.bias.data = ln.bias._xp.asarray(rng.standard_normal((2, 3)))
    x = rng.standard_normal((4, 2, 3)) * 5 + 3
    flat = x.reshape(4, 6)
    xhat = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + 1e-6)
    assert_close(ln(Tensor(x)), xhat.reshape(4, 2, 3) * ln.weight.numpy() + ln.bias.numpy(), ulps=256)
    assert mg.gradcheck(lambda t, w, b: F.layer_norm(t, (2, 3), w, b, 1e-6),
                        [Tensor(x, requires_grad=True), ln.weight, ln.bias])


def test_sequential_and_module_list():
    rng = np.random.default_rng(0)
    seq = nn.Sequential(nn.Linear(3, 4, rng=rng), nn.ReLU(), nn.Linear(4, 2, rng=rng))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU)
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    h = np.maximum(x @ seq[0].weight.numpy().T + seq[0].bias.numpy(), 0)
    assert_close(seq(Tensor(x)), h @ seq[2].weight.numpy().T + seq[2].bias.numpy(), np.float32)
    ml = nn.ModuleList()
    ml.append(nn.Linear(2, 2)).append(nn.Tanh())
    assert len(ml) == 2 and [type(m).__name__ for m in ml] == ["Linear", "Tanh"]
    assert len(ml.parameters()) == 2
    assert "Linear(in_features=2, out_features=2, bias=True)" in repr(ml)


def test_cross_entropy_reductions_ignore_index_and_nd_logits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 4))
    target = np.array([[0, 3, -100], [2, 2, 1]])
    x = Tensor(logits, requires_grad=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = target != -100
    per = np.where(valid, -np.take_along_axis(logp, np.where(valid, target, 0)[..., None], -1)[..., 0], 0.0)
    assert_close(F.cross_entropy(x, target, reduction="none"), per)
    assert_close(F.cross_entropy(x, target, reduction="sum"), per.sum())
    assert_close(F.cross_entropy(x, target), per.sum() / valid.sum())
    assert mg.gradcheck(lambda t: F.cross_entropy(t, target), [x])


# ------------------------------------------------------------------ MultiheadAttention

def _mha_reference(mha, query, key, value, key_padding_mask=None, causal=False):
    """Independent NumPy forward from the module's weights: (B, Tq, E)."""
    e, h = mha.embed_dim, mha.num_heads
    wq, bq = mha.q_proj.weight.numpy(), mha.q_proj.bias.numpy()
    wkv, bkv = mha.kv_proj.weight.numpy(), mha.kv_proj.bias.numpy()
    wo, bo = mha.out_proj.weight.numpy(), mha.out_proj.bias.numpy()
    q = query @ wq.T + bq
    k = key @ wkv[:e].T + bkv[:e]
    v = value @ wkv[e:].T + bkv[e:]
    b, tq, tk = query.shape[0], query.shape[1], key.shape[1]

    def heads(x):
        return x.reshape(b, x.shape[1], h, e // h).transpose(0, 2, 1, 3)
    q, k, v = heads(q), heads(k), heads(v)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(e // h)
    allowed = np.ones((b, 1, tq, tk), bool)
    if key_padding_mask is not None:
        allowed &= ~key_padding_mask[:, None, None, :]
    if causal:
        allowed &= np.tril(np.ones((tq, tk), bool), k=tk - tq)
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(b, tq, e)
    return o @ wo.T + bo


@pytest.fixture
def mha():
    return nn.MultiheadAttention(8, 2, dtype=np.float64, rng=np.random.default_rng(0))


def test_mha_self_attention_matches_numpy(mha):
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    assert_close(mha(Tensor(x)), _mha_reference(mha, x, x, x), ulps=256)


def test_mha_cross_attention_with_tq_different_from_tk(mha):
    rng = np.random.default_rng(2)
    q, kv, v = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 6, 8)), rng.standard_normal((2, 6, 8))
    out = mha(Tensor(q), Tensor(kv))
    assert out.shape == (2, 3, 8)
    assert_close(out, _mha_reference(mha, q, kv, kv), ulps=256)
    assert_close(mha(Tensor(q), Tensor(kv), Tensor(v)), _mha_reference(mha, q, kv, v), ulps=256)


def test_mha_causal_matches_numpy_and_ignores_the_future(mha):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 8))
    out = mha(Tensor(x), is_causal=True).numpy()
    assert_close(out, _mha_reference(mha, x, x, x, causal=True), ulps=256)
    x2 = x.copy()
    x2[:, 4:] = rng.standard_normal((1, 2, 8))          # change the last two tokens
    out2 = mha(Tensor(x2), is_causal=True).numpy()
    np.testing.assert_array_equal(out2[:, :4], out[:, :4])
    assert not np.allclose(out2[:, 4:], out[:, 4:])


def test_mha_key_padding_mask_gives_padded_keys_no_attention(mha):
    rng = np.random.default_rng(4)
    q, kv = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 5, 8))
    pad = np.array([[False, False, False, True, True], [False, True, False, False, False]])
    out = mha(Tensor(q), Tensor(kv), key_padding_mask=pad).numpy()
    assert_close(out, _mha_reference(mha, q, kv, kv, key_padding_mask=pad), ulps=256)
    kv2 = kv.copy()
    kv2[pad] = 100 * rng.standard_normal((int(pad.sum()), 8))     # change only padded keys/values
    out2 = mha(Tensor(q), Tensor(kv2), key_padding_mask=Tensor(pad)).numpy()
    np.testing.assert_allclose(out2, out, rtol=0, atol=16 * np.finfo(np.float64).eps)
    with pytest.raises(ValueError, match=r"key_padding_mask shape \(2, 4\)"):
        mha(Tensor(q), Tensor(kv), key_padding_mask=pad[:, :4])


def test_mha_gradients(mha):
    rng = np.random.default_rng(5)
    q = Tensor(rng.standard_normal((1, 2, 8)), requires_grad=True)
    kv = Tensor(rng.standard_normal((1, 3, 8)), requires_grad=True)
    pad = np.array([[False, False, True]])
    params = mha.parameters()
    assert len(params) == 6

    def fn(q, kv, *params):     # the parameters are the module's own: gradcheck perturbs them in place
        return mha(q, kv, key_padding_mask=pad, is_causal=True)
    assert mg.gradcheck(fn, [q, kv] + params, fast=True)
    assert mg.gradcheck(fn, [q, kv])


def test_mha_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not divisible"):
        nn.MultiheadAttention(10, 3)
    m = nn.MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match="embedding size 8"):
        m(Tensor(np.ones((1, 2, 6), np.float32)))


# ------------------------------------------------------------------ convolution, pooling, normalisation layers

def test_conv_layers_have_pytorch_shapes_and_init_bounds():
    rng = np.random.default_rng(0)
    c = nn.Conv2d(4, 6, (3, 2), groups=2, rng=rng)
    assert c.weight.shape == (6, 2, 3, 2) and c.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 3 * 2)                         # fan_in = in_channels / groups · kh · kw
    assert np.abs(c.weight.numpy()).max() <= bound and np.abs(c.bias.numpy()).max() <= bound
    assert np.abs(c.weight.numpy()).max() > 0.8 * bound      # uniform over the whole range
    assert nn.Conv1d(3, 5, 4, bias=False).bias is None and nn.Conv1d(3, 5, 4).weight.shape == (5, 3, 4)
    t = nn.ConvTranspose2d(4, 6, 3, groups=2, rng=rng)
    assert t.weight.shape == (4, 3, 3, 3)
    assert np.abs(t.weight.numpy()).max() <= 1 / math.sqrt(3 * 9)
    assert "kernel_size=(3, 2)" in repr(c) and "groups=2" in repr(c)
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 6, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(3, 6, 3, padding_mode="mirror")


def test_conv_layers_compute_their_functional_forms():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 4, 7, 6)))
    c = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2, dtype=np.float64, rng=rng)
    assert_close(c(x), F.conv2d(x, c.weight, c.bias, 2, 1, 1, 2).numpy())
    r = nn.Conv2d(4, 2, (3, 2), padding="same", padding_mode="reflect", dtype=np.float64, rng=rng)
    want = F.conv2d(F.pad(x, (0, 1, 1, 1), mode="reflect"), r.weight, r.bias)   # 'same': kw=2 pads (0, 1)
    assert r(x).shape == x.shape[:1] + (2,) + x.shape[2:]
    assert_close(r(x), want.numpy())
    t = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, dtype=np.float64, rng=rng)
    assert t(x).shape == (2, 2, 14, 12)
    assert_close(t(x), F.conv_transpose2d(x, t.weight, t.bias, 2, 1, 1).numpy())
    c1 = nn.Conv1d(4, 3, 2, padding=1, padding_mode="circular", dtype=np.float64, rng=rng)
    x1 = x[:, :, 0]
    assert_close(c1(x1), F.conv1d(F.pad(x1, (1, 1), mode="circular"), c1.weight, c1.bias).numpy())


def test_pooling_layers_and_upsample_call_their_functional_forms():
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 7, 8)))
    pairs = [(nn.MaxPool2d(3, 2, 1), F.max_pool2d(x, 3, 2, 1)), (nn.AvgPool2d(2), F.avg_pool2d(x, 2)),
             (nn.AdaptiveAvgPool2d((2, 3)), F.adaptive_avg_pool2d(x, (2, 3))),
             (nn.Upsample(scale_factor=2, mode="bilinear"), F.interpolate(x, scale_factor=2, mode="bilinear"))]
    for m, want in pairs:
        assert_close(m(x), want.numpy())
    x1 = x[:, :, 0]
    for m, want in [(nn.MaxPool1d(2), F.max_pool1d(x1, 2)), (nn.AvgPool1d(3, 1, 1), F.avg_pool1d(x1, 3, 1, 1)),
                    (nn.AdaptiveAvgPool1d(1), x1.mean(axis=2, keepdims=True))]:
        assert_close(m(x1), want.numpy())


def _bn_numpy(x, steps_stats, momentum=0.1):
    """Running mean and (unbiased) variance after the batches in steps_stats, by PyTorch's rule."""
    rm, rv = np.zeros(x.shape[1]), np.ones(x.shape[1])
    for b in steps_stats:
        axes = (0,) + tuple(range(2, b.ndim))
        n = b.size // b.shape[1]
        m = momentum if momentum is not None else None
        rm = (1 - m) * rm + m * b.mean(axes)
        rv = (1 - m) * rv + m * b.var(axes) * n / (n - 1)
    return rm, rv


def test_batchnorm_trains_on_batch_statistics_and_updates_running_ones_then_evaluates_with_them():
    rng = np.random.default_rng(3)
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    batches = [rng.standard_normal((4, 3, 2, 5)) * 2 + 1 for _ in range(3)]
    for b in batches:
        y = bn(Tensor(b))
        mu, var = b.mean((0, 2, 3), keepdims=True), b.var((0, 2, 3), keepdims=True)
        assert_close(y, (b - mu) / np.sqrt(var + 1e-5))
    rm, rv = _bn_numpy(batches[0], batches)
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)
    assert bn.num_batches_tracked.item() == 3
    bn.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    assert_close(bn(Tensor(x)), (x - rm.reshape(1, 3, 1, 1)) / np.sqrt(rv.reshape(1, 3, 1, 1) + 1e-5))
    assert bn.num_batches_tracked.item() == 3                 # eval updates nothing
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def test_batchnorm_gradients_reach_weight_and_bias_but_not_the_running_statistics():
    rng = np.random.default_rng(4)
    bn = nn.BatchNorm1d(3, dtype=np.float64)
    x = Tensor(rng.standard_normal((5, 3)), requires_grad=True)
    (bn(x) * Tensor(rng.standard_normal((5, 3)))).sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad is not None and x.grad is not None
    assert not bn.running_mean.requires_grad and bn.running_mean.grad is None
    fresh = nn.BatchNorm1d(3, dtype=np.float64)

    def fn(x, w, b):     # gradcheck perturbs the module's own parameters in place
        return F.batch_norm(x, None, None, w, b, training=True)
    assert mg.gradcheck(fn, [x, fresh.weight, fresh.bias])


def test_batchnorm_momentum_none_is_a_cumulative_average_and_untracked_stats_use_the_batch():
    rng = np.random.default_rng(5)
    bn = nn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    batches = [rng.standard_normal((6, 2, 3)) + i for i in range(4)]
    for b in batches:
        bn(Tensor(b))
    assert_close(bn.running_mean, np.mean([b.mean((0, 2)) for b in batches], axis=0))
    free = nn.BatchNorm1d(2, track_running_stats=False, affine=False, dtype=np.float64).eval()
    b = batches[0]
    assert free.running_mean is None and free.weight is None
    assert_close(free(Tensor(b)), (b - b.mean((0, 2), keepdims=True)) / np.sqrt(b.var((0, 2), keepdims=True) + 1e-5))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        bn(Tensor(np.ones((2, 2, 2, 2))))
    with pytest.raises(ValueError, match="more than one value per channel"):
        nn.BatchNorm1d(2)(Tensor(np.ones((1, 2), np.float32)))


def test_batchnorm_state_dict_round_trips_the_running_statistics():
    rng = np.random.default_rng(6)
    a, b = nn.BatchNorm2d(2, dtype=np.float64), nn.BatchNorm2d(2, dtype=np.float64)
    a(Tensor(rng.standard_normal((3, 2, 2, 2))))
    b.load_state_dict(a.state_dict())
    x = Tensor(rng.standard_normal((1, 2, 2, 2)))
    assert_close(b.eval()(x), a.eval()(x).numpy())
    assert b.num_batches_tracked.item() == 1


def test_group_norm_and_rms_norm_layers():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 4))
    gn = nn.GroupNorm(3, 6, dtype=np.float64)
    g = x.reshape(2, 3, 8)
    assert_close(gn(Tensor(x)), ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5))
                 .reshape(x.shape))
    assert gn.weight.shape == (6,) and gn.bias.shape == (6,)
    rms = nn.RMSNorm((6, 4), dtype=np.float64)
    eps = np.finfo(np.float64).eps
    assert_close(rms(Tensor(x)), x / np.sqrt((x * x).mean((1, 2), keepdims=True) + eps))
    assert nn.RMSNorm(4, elementwise_affine=False).weight is None
    with pytest.raises(ValueError, match="cannot be split into 4 groups"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="does not end with normalized_shape"):
        rms(Tensor(np.ones((2, 4, 6))))


def test_flatten_identity_and_activation_layers():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2, 3, 4, 5))
    x = Tensor(a)
    assert nn.Flatten()(x).shape == (2, 60) and nn.Flatten(0, 1)(x).shape == (6, 4, 5)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5) and nn.Flatten()(Tensor(np.ones((0, 3, 2)))).shape == (0, 6)
    ident = nn.Identity(54, unused=True)
    assert ident(x) is x and ident.parameters() == []
    assert_close(nn.Sigmoid()(x), 1 / (1 + np.exp(-a)))
    e = np.exp(a - a.max(1, keepdims=True))
    assert_close(nn.Softmax(dim=1)(x), e / e.sum(1, keepdims=True))
    assert_close(nn.LogSoftmax(dim=1)(x), np.log(e / e.sum(1, keepdims=True)))
    assert_close(nn.ReLU()(x), np.maximum(a, 0))
    assert_close(nn.Tanh()(x), np.tanh(a))
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        nn.Flatten(2, 1)(x)


def test_a_cnn_step_runs_on_the_strict_backend(strict_backend):
    rng = np.random.default_rng(9)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.ConvTranspose2d(4, 2, 2, stride=2, rng=rng), nn.GroupNorm(1, 2), nn.AvgPool2d(2),
                        nn.Upsample(scale_factor=2, mode="bilinear"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(2, 3, rng=rng))
    assert all(type(p.data).__name__ == "StrictArray" for p in net.parameters())
    loss = F.cross_entropy(net(Tensor(rng.standard_normal((2, 2, 6, 6)).astype(np.float32))), np.array([0, 2]))
    loss.backward()
    assert all(type(p.grad.data).__name__ == "StrictArray" for p in net.parameters())
    assert type(net[1].running_mean.data).__name__ == "StrictArray"


@pytest.mark.parametrize("name, kwargs, fn", [
    ("SiLU", {}, lambda x: x / (1 + np.exp(-x))),
    ("Mish", {}, lambda x: x * np.tanh(np.log1p(np.exp(x)))),
    ("SELU", {}, lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))),
    ("ReLU6", {}, lambda x: np.clip(x, 0, 6)),
    ("Hardsigmoid", {}, lambda x: np.clip(x / 6 + 0.5, 0, 1)),
    ("Hardswish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    ("LogSigmoid", {}, lambda x: -np.log1p(np.exp(-x))),
    ("Softsign", {}, lambda x: x / (1 + np.abs(x))),
    ("Softplus", {"beta": 2.0}, lambda x: np.log1p(np.exp(2 * x)) / 2),
    ("LeakyReLU", {"negative_slope": 0.2}, lambda x: np.where(x > 0, x, 0.2 * x)),
    ("ELU", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    ("CELU", {"alpha": 2.0}, lambda x: np.where(x > 0, x, 2.0 * np.expm1(x / 2.0))),
    ("Hardtanh", {"min_val": -0.5, "max_val": 2.0}, lambda x: np.clip(x, -0.5, 2.0)),
    ("GLU", {"dim": -1}, lambda x: x[..., :3] / (1 + np.exp(-x[..., 3:]))),
])
def test_activation_modules_match_their_formulas(name, kwargs, fn):
    x = np.random.default_rng(3).uniform(-4, 4, (5, 6)) + 0.05      # away from the kinks at 0
    m = getattr(nn, name)(**kwargs)
    y = m(Tensor(x, requires_grad=True))
    np.testing.assert_allclose(y.numpy(), fn(x), rtol=1e-12, atol=1e-12)
    assert all(f"{k}=" in repr(m) for k in kwargs if k != "dim")
    assert list(m.parameters()) == []
