"""The GPT model: config checks, init, shapes, causality, weight tying, gradients, the KV cache."""
import math

import numpy as np
import pytest

import minigrad
from minigrad.models.gpt import GPT, GPTConfig, KVCache

EPS32 = np.finfo(np.float32).eps
TINY = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)


def _ids(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.mark.parametrize("bad, msg", [
    (dict(n_embd=10, n_head=3), "not divisible"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_rejects_bad_values(bad, msg):
    with pytest.raises(ValueError, match=msg):
        GPTConfig(**dict(TINY, **bad))


def test_config_round_trips_through_a_dict():
    cfg = GPTConfig(**TINY, dropout=0.1, bias=True)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict(dict(cfg.to_dict(), n_experts=4))


def test_default_config_is_nanogpts_cpu_config():
    cfg = GPTConfig()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.dropout) == (4, 4, 128, 64, 0.0)


def test_parameters_and_gpt2_init():
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=3, n_head=4, n_embd=64, bias=True)
    m = GPT(cfg, seed=1)
    params = dict(m.named_parameters())
    C, L = cfg.n_embd, cfg.n_layer
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert m.num_params() == cfg.vocab_size * C + cfg.block_size * C + L * per_block + 2 * C
    assert not any(p.shape[0] == cfg.vocab_size for n, p in params.items() if n != "wte.weight")  # tied head
    assert all(p.dtype == np.float32 for p in params.values())
    for name, p in params.items():
        w = p.numpy()
        if ".ln_" in name or name.startswith("ln_"):
            assert np.all(w == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert np.all(w == 0), name
        else:
            std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
            # sample std of n normals: relative standard error 1/sqrt(2n); allow 5 of them
            assert abs(w.std() / std - 1) < 5 / math.sqrt(2 * w.size), (name, w.std(), std)
    same = GPT(cfg, seed=1)
    assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(m.parameters(), same.parameters()))


def test_forward_shapes_dtype_and_initial_loss():
    cfg = GPTConfig(**TINY)
    m = GPT(cfg)
    x, y = _ids((3, 8), 11), _ids((3, 8), 11, seed=1)
    logits, loss = m(x, y)
    assert logits.shape == (3, 8, 11) and logits.dtype == np.float32 and loss.dtype == np.float32
    # init logits are O(0.02 * sqrt(C)) small, so the loss is close to that of a uniform guess
    assert abs(loss.item() - math.log(11)) < 0.1
    logits2, none = m(x)
    assert none is None and np.array_equal(logits2.numpy(), logits.numpy())
    last, _ = m(x, last_only=True)
    assert last.shape == (3, 1, 11) and np.allclose(last.numpy()[:, 0], logits.numpy()[:, -1],
                                                    atol=16 * EPS32 * np.abs(logits.numpy()).max())
    with pytest.raises(ValueError, match="exceeds block_size 8"):
        m(_ids((1, 9), 11))


def test_attention_is_causal():
    m = GPT(GPTConfig(**TINY))
    x = _ids((2, 8), 11)
    x2 = x.copy()
    x2[:, 5:] = (x2[:, 5:] + 1) % 11  # change the future only
    a, b = m(x)[0].numpy(), m(x2)[0].numpy()
    assert np.array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_gradients_flow_to_every_parameter_and_through_the_tied_head():
    m = GPT(GPTConfig(**TINY, bias=True))
    x = np.zeros((2, 8), dtype=np.int64)  # only token 0 is ever embedded
    _, loss = m(x, _ids((2, 8), 11))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32, name
        assert np.all(np.isfinite(p.grad.numpy())), name
    g = m.wte.weight.grad.numpy()
    assert np.abs(g[1:]).max() > 0  # rows never looked up get gradient only through the output head


def test_loss_gradient_matches_finite_differences_in_float64():
    cfg = GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, n_embd=8, bias=True)
    m = GPT(cfg, seed=3)
    rng = np.random.default_rng(4)
    for p in m.parameters():  # float64, and non-trivial LayerNorm/bias values
        p.data = p.data.astype(np.float64) + 0.1 * rng.standard_normal(p.shape)
    x, y = _ids((2, 6), 7, seed=5), _ids((2, 6), 7, seed=6)

    def loss_value():
        with minigrad.no_grad():
            return m(x, y)[1].item()

    _, loss = m(x, y)
    loss.backward()
    h = 1e-6
    for name, p in m.named_parameters():
        flat = p.data.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = loss_value()
            flat[i] = old - h
            down = loss_value()
            flat[i] = old
            numeric = (up - down) / (2 * h)
            analytic = p.grad.data.reshape(-1)[i]
            # central differences: truncation O(h^2), rounding O(eps64 * |loss| / h) ~ 1e-9
            assert abs(numeric - analytic) <= 1e-6 + 1e-4 * abs(numeric), (name, i, numeric, analytic)


def test_kv_cache_incremental_logits_match_the_full_forward():
    cfg = GPTConfig(**TINY)
    m = GPT(cfg, seed=2)
    m.eval()
    seq = _ids((2, 8), 11, seed=7)
    with minigrad.no_grad():
        full = m(seq)[0].numpy()
        cache = KVCache(cfg, 2)
        parts = [m(seq[:, :3], cache=cache)[0].numpy()]  # prefill 3 tokens, then one at a time
        for t in range(3, 8):
            parts.append(m(seq[:, t:t + 1], cache=cache)[0].numpy())
        assert cache.length == 8
        with pytest.raises(ValueError, match="exceeds block_size"):
            m(seq[:, :1], cache=cache)
    inc = np.concatenate(parts, axis=1)
    # same math, different summation order (matmul shapes): a few float32 ulps of the largest logit
    assert np.allclose(inc, full, rtol=0, atol=64 * EPS32 * np.abs(full).max())


def test_dropout_uses_the_models_seeded_generator():
    cfg = GPTConfig(**TINY, dropout=0.5)
    x = _ids((2, 8), 11)
    a, b = GPT(cfg, seed=9), GPT(cfg, seed=9)
    ya1, ya2, yb1 = a(x)[0].numpy(), a(x)[0].numpy(), b(x)[0].numpy()
    assert not np.array_equal(ya1, ya2)  # training mode: fresh masks each call
    assert np.array_equal(ya1, yb1)  # same seed, same masks
    a.eval()
    assert np.array_equal(a(x)[0].numpy(), a(x)[0].numpy())  # eval mode: deterministic


def test_fused_kernel_path_matches_the_reference(monkeypatch, fast_paths):
    """The CUDA kernels' path (through the CPU emulator) gives the model the same logits, grads and cache."""
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("the CUDA-kernel emulator needs g++")
    from minigrad import dispatch

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=32)  # head size 32
    x, y = _ids((2, 8), 11), _ids((2, 8), 11, seed=1)
    calls = []
    real = dispatch.launchers()
    spy = type(real)(**{name: (lambda f, name=name: lambda *a, **k: calls.append(name) or f(*a, **k))(fn)
                        for name, fn in vars(real).items()})
    monkeypatch.setattr(dispatch, "launchers", lambda: spy)
    runs = {}
    for mode in ("off", "emulate"):
        monkeypatch.setenv("MINIGRAD_KERNELS", mode)
        assert dispatch.use_kernels("cpu") == (mode == "emulate")
        m = GPT(cfg, seed=0)
        logits, loss = m(x, y)
        loss.backward()
        m.eval()
        with minigrad.no_grad():
            cache = KVCache(cfg, 2)
            m(x[:, :5], cache=cache)
            step = m(x[:, 5:6], cache=cache)[0].numpy()
        runs[mode] = (logits.numpy(), m.h[0].attn.c_attn.weight.grad.numpy(), step)
        if mode == "off":
            assert calls == []
    assert {"layernorm_forward", "layernorm_backward", "attention_forward", "attention_backward"} <= set(calls)
    scale = np.abs(runs["off"][0]).max()
    for a, b in zip(runs["off"], runs["emulate"]):
        assert np.allclose(a, b, rtol=0, atol=64 * EPS32 * max(scale, np.abs(a).max()))
