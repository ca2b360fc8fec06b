"""minigrad.nn.quantize: round trips, QuantizedLinear, quantize_ on a GPT, inference-only refusals,
save/load through safetensors. The native kernels themselves: tests/test_quantize_kernels.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
from minigrad.models.gpt import GPT, GPTConfig, KVCache

import minigrad
from minigrad import nn
from minigrad.backend import bfloat16
from minigrad.nn import quantize as Q

EPS = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------- arrays
@pytest.mark.parametrize("shape,group", [((7, 33), None), ((7, 33), 8), ((5, 256), 128), ((3, 10), 64),
                                         ((1, 1), None), ((4, 130), 40)])
def test_int8_round_trip_error_is_at_most_half_a_scale(shape, group):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 3, (shape[0], 1))).astype(np.float32)
    w[0, 0] = 0.0
    q, s = Q.quantize_int8(w, group)
    n, k = shape
    g = min(group or k, k)
    assert q.dtype == np.int8 and q.shape == shape and s.dtype == np.float32 and s.shape == (n, -(-k // g))
    assert np.abs(q.astype(np.int16)).max() <= 127
    s_full = np.repeat(s, g, axis=1)[:, :k].astype(np.float64)
    err = np.abs(w.astype(np.float64) - q.astype(np.float64) * s_full)
    assert (err <= s_full / 2 * (1 + 4 * EPS)).all()          # rint's half step, plus s's own rounding
    # each group's largest element is represented at ±127 (the scale is not wasted)
    for gi in range(s.shape[1]):
        block = np.abs(q[:, gi * g:(gi + 1) * g].astype(np.int16)).max(axis=1)
        assert (block[s[:, gi] > 0] == 127).all()
    d = Q.dequantize(q, s, g)
    assert d.dtype == np.float32 and np.array_equal(d, (q.astype(np.float32) * s_full.astype(np.float32)))


def test_int8_zero_rows_and_groups_stay_exact_zeros():
    w = np.zeros((3, 16), np.float32)
    w[1, 8:] = 1.5
    q, s = Q.quantize_int8(w, 8)
    assert (s[0] == 0).all() and s[1, 0] == 0 and s[1, 1] > 0
    assert np.array_equal(Q.dequantize(q, s, 8), w)


def test_bf16_round_trip_is_round_to_nearest_even():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 50)).astype(np.float32)
    b = Q.quantize_bf16(w)
    assert b.dtype == bfloat16()
    d = Q.dequantize(b)
    assert d.dtype == np.float32
    assert (np.abs(d - w) <= np.abs(w) * 2.0 ** -8).all()        # half an ulp of an 8-bit significand
    bits = w.view(np.uint32).astype(np.uint64)                   # the RNE rule on the bits, by hand
    rne = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    assert np.array_equal(b.view(np.uint16), rne)


def test_bad_arguments_are_one_line_errors():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        Q.quantize_int8(w, 0)
    with pytest.raises(ValueError, match="2-D"):
        Q.quantize_int8(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="int8 with scales or bfloat16"):
        Q.dequantize(w)
    with pytest.raises(ValueError, match="does not fit weight"):
        Q.dequantize(np.zeros((3, 4), np.int8), np.ones((3, 2), np.float32), None)
    m = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))
    with pytest.raises(ValueError, match="scheme must be one of"):
        nn.quantize_(m, "int4")
    with pytest.raises(ValueError, match="group_size applies to int8 only"):
        nn.quantize_(m, "bfloat16", group_size=32)
    with pytest.raises(TypeError, match="pass the model holding the Linear"):
        nn.quantize_(nn.Linear(4, 4), "int8")
    nn.quantize_(m, "int8")
    with pytest.raises(ValueError, match="already quantized"):
        nn.quantize_(m, "bfloat16")
    with pytest.raises(ValueError, match="activations must be"):
        Q.QuantizedLinear(4, 4, "bfloat16", activations="int8")
    with pytest.raises(ValueError, match="groups of at most 66,000"):
        Q.QuantizedLinear(70_000, 2, "int8", activations="int8")
    Q.QuantizedLinear(70_000, 2, "int8", group_size=128, activations="int8")
    f = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))
    assert nn.quantize_(f, "float32") is f and f.lm_head is None     # --weights float32: unchanged


# ---------------------------------------------------------------- the module
@pytest.mark.parametrize("scheme,group,acts", [("int8", None, "float32"), ("int8", 16, "float32"),
                                               ("bfloat16", None, "float32"), ("int8", 24, "int8")])
def test_quantized_linear_matches_its_dequantized_linear(scheme, group, acts):
    """Native (if built) and reference forward both equal x @ dequant(W)ᵀ + b within float32's bound."""
    rng = np.random.default_rng(2)
    lin = nn.Linear(40, 30, rng=rng)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    ql = Q.QuantizedLinear.from_float(lin.weight, lin.bias, scheme, group, acts)
    wd = ql.dequantized().astype(np.float64)
    x64 = x.reshape(-1, 40).astype(np.float64)
    if acts == "int8":
        xq, xs = Q.quantize_rows(x.reshape(-1, 40))
        x64 = xq.astype(np.float64) * xs[:, None]
    ref = (x64 @ wd.T + lin.bias.numpy()).reshape(2, 3, 30)
    tol = (40 + 2) * EPS * (np.abs(x64) @ np.abs(wd).T + np.abs(lin.bias.numpy())).reshape(2, 3, 30)
    for impl in ("auto", "reference"):
        with minigrad.impl(impl):
            y = ql(minigrad.Tensor(x)).numpy()
        assert y.shape == (2, 3, 30) and y.dtype == np.float32
        assert (np.abs(y - ref) <= tol).all(), impl


def test_quantized_modules_refuse_backward_and_requires_grad():
    m = GPT(GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8))
    nn.quantize_(m, "int8")
    idx = np.zeros((1, 8), np.int64)
    _, loss = m(idx, idx)                       # wte is still a Parameter, so a graph is recorded
    with pytest.raises(RuntimeError, match="inference only"):
        loss.backward()
    with pytest.raises(RuntimeError, match="inference only"):
        m.lm_head.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference only"):
        m.h[0].attn.c_attn.requires_grad_()
    names = {n for n, _ in m.named_parameters()}
    assert not any("c_attn" in n or "c_fc" in n or "c_proj" in n or "lm_head" in n for n in names)
    assert all(not b.requires_grad for b in (m.lm_head.weight, m.lm_head.weight_scale))


def test_quantize_replaces_every_linear_and_the_tied_head():
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=16, bias=True)
    m = GPT(cfg)
    n_linear = sum(isinstance(x, nn.Linear) for x in m.modules())
    assert m.lm_head is None
    assert nn.quantize_(m, "int8", group_size=32) is m
    quantized = [x for x in m.modules() if isinstance(x, Q.QuantizedLinear)]
    assert len(quantized) == n_linear + 1 and not any(isinstance(x, nn.Linear) for x in m.modules())
    assert m.lm_head.weight.shape == (cfg.vocab_size, cfg.n_embd) and m.lm_head.bias is None
    assert m.h[0].attn.c_attn.bias is not None                 # biases kept, float32
    assert m.h[0].attn.c_attn.bias.dtype == np.float32
    # int8 weights plus their scales are about a quarter of the float32 bytes of the same layers
    f32 = GPT(cfg)
    lin_bytes = sum(x.weight.data.nbytes for x in f32.modules() if isinstance(x, nn.Linear)) \
        + f32.wte.weight.data.nbytes
    q_bytes = sum(x.weight.data.nbytes + x.weight_scale.data.nbytes for x in quantized)
    assert q_bytes == lin_bytes // 4 + sum(x.weight_scale.data.nbytes for x in quantized)
    head = m.lm_head.dequantized()
    nn.dequantize_(m)
    assert sum(isinstance(x, nn.Linear) for x in m.modules()) == n_linear + 1
    assert isinstance(m.lm_head, nn.Linear) and np.array_equal(m.lm_head.weight.numpy(), head)


def _logits(model, idx):
    with minigrad.no_grad():
        return model(idx)[0].numpy().astype(np.float64)


@pytest.mark.parametrize("scheme,group,bound", [("int8", None, 0.03), ("int8", 64, 0.03), ("bfloat16", None, 0.005)])
def test_quantized_gpt_logits_close_to_float32(scheme, group, bound):
    """Default config, GPT-2 init; relative RMS error of the logits. Per weight, int8's error is uniform
    in ±s/2 with s = max|w|/127 per row: RMS s/√12 ≈ 0.9% of the RMS weight for Gaussian rows of 128..512
    (max|w| ≈ 4σ). bfloat16's is uniform in ±half an ulp of an 8-bit significand: ≈ 2^-8/√3·0.72 ≈ 0.16%
    relative. The bounds are 3× those per-weight figures (measured on the logits: int8 1.1%, 1.0% with
    groups of 64, bf16 0.26%). A second check: the float model holding the dequantized weights gives the
    quantized model's logits to float32 rounding (measured 3.6 eps relative RMS; bound 64 eps)."""
    cfg = GPTConfig()
    ref_model, q_model = GPT(cfg, seed=3).eval(), GPT(cfg, seed=3).eval()
    nn.quantize_(q_model, scheme, group_size=group)
    idx = np.random.default_rng(4).integers(0, cfg.vocab_size, (2, cfg.block_size))
    ref, got = _logits(ref_model, idx), _logits(q_model, idx)
    rel = np.sqrt(np.mean((got - ref) ** 2) / np.mean(ref ** 2))
    assert rel < bound, rel
    # and the quantized model equals the float model holding the dequantized weights, to float32 rounding
    deq = nn.dequantize_(_requantized(cfg, scheme, group))
    d = _logits(deq, idx)
    assert np.sqrt(np.mean((got - d) ** 2) / np.mean(d ** 2)) < 64 * EPS


def _requantized(cfg, scheme, group):
    m = GPT(cfg, seed=3).eval()
    return nn.quantize_(m, scheme, group_size=group)


@pytest.mark.parametrize("scheme", ["int8", "bfloat16"])
def test_quantized_decode_with_kv_cache_matches_full_forward(scheme):
    """Token by token (M = 1: the GEMV path) against the whole sequence at once (M = T: the GEMM path)."""
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=16)
    m = nn.quantize_(GPT(cfg, seed=5).eval(), scheme)
    idx = np.random.default_rng(6).integers(0, cfg.vocab_size, (1, 12))
    full = _logits(m, idx)
    cache = KVCache(cfg, 1)
    steps = []
    with minigrad.no_grad():
        for t in range(12):
            steps.append(m(idx[:, t:t + 1], cache=cache)[0].numpy())
    step = np.concatenate(steps, axis=1).astype(np.float64)
    # the two paths differ only in float32 summation order: at most (K + 2)·eps relative per matmul
    # stage, K = 4C the longest reduction, over 2·n_layer + 1 stages in a row
    bound = (2 * cfg.n_layer + 1) * (4 * cfg.n_embd + 2) * EPS * np.abs(full).max()
    assert np.abs(step - full).max() <= bound


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("scheme,group,acts", [("int8", None, "float32"), ("int8", 32, "float32"),
                                               ("bfloat16", None, "float32"), ("int8", None, "int8")])
def test_save_load_round_trip_is_bit_exact(tmp_path, scheme, group, acts):
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=16, bias=True)
    m = nn.quantize_(GPT(cfg, seed=7).eval(), scheme, group_size=group, activations=acts)
    path = nn.save_quantized(m, tmp_path / "q.safetensors", metadata={"config": json.dumps({"n_layer": 2})})
    meta, arrays = Q.read_quantized(path)
    assert meta["scheme"] == scheme and meta["group_size"] == ("none" if group is None else str(group))
    assert meta["activations"] == acts and meta["config"] == '{"n_layer": 2}'
    assert arrays["lm_head.weight"].dtype == (np.int8 if scheme == "int8" else bfloat16())
    assert ("lm_head.weight_scale" in arrays) == (scheme == "int8")
    # a fresh float model of the same structure (other seed) takes the file's arrays
    r = nn.load_quantized(GPT(cfg, seed=99).eval(), path)
    own, back = m.state_dict(), r.state_dict()
    assert own.keys() == back.keys()
    for k in own:
        assert own[k].dtype == back[k].dtype and np.array_equal(own[k].view(np.uint8), back[k].view(np.uint8)), k
    idx = np.random.default_rng(8).integers(0, cfg.vocab_size, (2, 16))
    assert np.array_equal(_logits(m, idx), _logits(r, idx))
    # and a model already quantized the same way loads it too
    nn.load_quantized(nn.quantize_(GPT(cfg, seed=11), scheme, group_size=group, activations=acts), path)


@pytest.mark.parametrize("scheme", ["int8", "bfloat16"])
def test_quantized_weights_are_packed_into_one_page_aligned_arena(tmp_path, scheme):
    """quantize_ and load_quantized put every quantized weight into one arena (huge pages for the
    decode GEMVs: minigrad.hugepages), each a page-aligned C-contiguous view, values unchanged."""
    cfg = GPTConfig(n_layer=2, n_embd=64, n_head=4, block_size=16, bias=True)
    floats = GPT(cfg, seed=3).eval()
    expect = {name.rstrip("."): Q.QuantizedLinear.from_float(lin.weight, None, scheme).weight.data
              for name, lin in floats.named_modules() if isinstance(lin, nn.Linear)}
    expect["lm_head"] = Q.QuantizedLinear.from_float(floats.wte.weight, None, scheme).weight.data

    def check(model):
        layers = {name.rstrip("."): m for name, m in model.named_modules() if isinstance(m, Q.QuantizedLinear)}
        assert layers.keys() == expect.keys()
        bases = set()
        for name, m in layers.items():
            w = m.weight.data
            assert w.flags.c_contiguous and w.ctypes.data % Q.ARENA_ALIGN == 0, name
            assert w.dtype == expect[name].dtype and np.array_equal(w.view(np.uint8), expect[name].view(np.uint8)), name
            base = w
            while base.base is not None and isinstance(base.base, np.ndarray):
                base = base.base
            bases.add(id(base))
        assert len(bases) == 1                        # one arena
        starts = sorted(m.weight.data.ctypes.data for m in layers.values())
        ends = sorted(m.weight.data.ctypes.data + m.weight.data.nbytes for m in layers.values())
        assert all(e <= s for e, s in zip(ends, starts[1:]))    # no two weights overlap

    m = nn.quantize_(GPT(cfg, seed=3).eval(), scheme)
    check(m)
    path = nn.save_quantized(m, tmp_path / "q.safetensors")
    check(nn.load_quantized(GPT(cfg, seed=5).eval(), path))
    assert Q.pack_weights(GPT(cfg)) == 0              # nothing quantized: nothing to pack


def test_load_refuses_what_does_not_fit(tmp_path):
    cfg = GPTConfig(n_layer=1, n_embd=32, n_head=2, block_size=8)
    path = nn.save_quantized(nn.quantize_(GPT(cfg), "int8"), tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match="does not fit the model|size mismatch"):
        nn.load_quantized(GPT(GPTConfig(n_layer=1, n_embd=64, n_head=2, block_size=8)), path)
    with pytest.raises(ValueError, match="quantized as"):
        nn.load_quantized(nn.quantize_(GPT(cfg), "bfloat16"), path)
    with pytest.raises(ValueError, match="no quantized layers"):
        nn.save_quantized(GPT(cfg), tmp_path / "f.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        nn.load_quantized(GPT(cfg), junk)
    import safetensors.numpy as stnp
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(stnp.save({"a": np.zeros(2, np.float32)}))
    with pytest.raises(ValueError, match="not a minigrad quantized model"):
        nn.load_quantized(GPT(cfg), plain)
    with pytest.raises(ValueError, match="cannot read"):
        nn.load_quantized(GPT(cfg), tmp_path / "missing.safetensors")


@pytest.mark.parametrize("scheme,bound", [("int8", 0.03), ("bfloat16", 0.005)])
def test_quantized_seq2seq_runs_its_linear_layers_quantized(scheme, bound):
    """quantize_ on the encoder-decoder: every Linear (attention projections and the MLP, whose fused
    op reads .weight, so the quantized MLP runs its two layers) is replaced; the tied head stays
    float32. Logits within the same relative-RMS bounds as the GPT's (derived there)."""
    from minigrad.models.seq2seq import Seq2Seq, Seq2SeqConfig
    cfg = Seq2SeqConfig()
    ref, q = Seq2Seq(cfg, seed=1).eval(), nn.quantize_(Seq2Seq(cfg, seed=1).eval(), scheme)
    assert not any(isinstance(x, nn.Linear) for x in q.modules())
    rng = np.random.default_rng(2)
    src, dec = rng.integers(0, cfg.vocab_size, (2, 9)), rng.integers(0, cfg.vocab_size, (2, 7))
    with minigrad.no_grad():
        a, b = (m(src, dec)[0].numpy().astype(np.float64) for m in (ref, q))
    assert np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2)) < bound
