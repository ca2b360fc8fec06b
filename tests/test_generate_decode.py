"""The array decode path (models/decode.py): equal to the Tensor forward, no per-token allocation."""
import tracemalloc

import numpy as np
import pytest

import minigrad
from minigrad.models import generate as G
from minigrad.models.decode import Decoder
from minigrad.models.gpt import GPT, GPTConfig

EPS32 = float(np.finfo(np.float32).eps)


def _model(cfg, seed=0):
    m = GPT(cfg, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in m.parameters():  # larger weights than the init: logits far from uniform
        p.data += (0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    m.eval()
    return m


def _tolerance(cfg, ref):
    """The step and the forward differ only in the summation order of dot products of length at
    most max(4C, block) (the attention's products run over cached keys): a worst-case bound of n
    float32 roundings per product, times the logits' scale."""
    n = max(4 * cfg.n_embd, cfg.block_size)
    return n * EPS32 * float(np.abs(ref).max())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_decode_steps_equal_the_cache_free_forward(bias, batch):
    cfg = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=4, n_embd=32, bias=bias)
    m = _model(cfg)
    seq = np.random.default_rng(1).integers(0, cfg.vocab_size, (batch, cfg.block_size))
    dec = Decoder(m, batch)
    assert dec.fast
    with minigrad.no_grad():
        got = [np.array(dec.prefill(seq[:, :3]))]
        for t in range(3, cfg.block_size):
            got.append(np.array(dec.step(seq[:, t])))
        ref = [m(seq[:, :t + 1], last_only=True)[0].numpy()[:, -1] for t in range(2, cfg.block_size)]
        with pytest.raises(ValueError, match="exceeds block_size"):
            dec.step(seq[:, 0])
    for t, (a, b) in enumerate(zip(got, ref)):
        assert np.allclose(a, b, rtol=0, atol=_tolerance(cfg, b)), (t, np.abs(a - b).max())


@pytest.mark.parametrize("isa", ["portable", "auto"])
def test_decode_steps_on_each_native_path_equal_the_forward(monkeypatch, isa):
    """hs = 64 (the AVX-512 attention's size): MINIGRAD_QUANT_ISA=portable builds the plan on the plain
    loops (GEMVs and attention), auto on the AVX-512 ones where the CPU has them; both match the forward."""
    monkeypatch.setenv("MINIGRAD_QUANT_ISA", isa)
    cfg = GPTConfig(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=128)
    m = _model(cfg)
    seq = np.random.default_rng(4).integers(0, cfg.vocab_size, (1, cfg.block_size))
    dec = Decoder(m, 1)
    assert dec.fast
    qkv = dec.blocks[0][1]                   # f32_matmul bound to (x, w, b, y, M, N, K, isa, threads) on AVX-512
    if dec.lib.quant_isa & 1:
        assert qkv.args[7] == (0 if isa == "portable" else 1)
    with minigrad.no_grad():
        dec.prefill(seq[:, :2])
        for t in range(2, cfg.block_size):
            got = np.array(dec.step(seq[:, t]))
            ref = m(seq[:, :t + 1], last_only=True)[0].numpy()[:, -1]
            assert np.allclose(got, ref, rtol=0, atol=_tolerance(cfg, ref)), (t, np.abs(got - ref).max())


def test_generate_logits_equal_the_cache_free_path_past_block_size():
    """next_logits with the cache (prefill, decode steps, then the window past block_size) against
    the cache-free path at every length from the prompt to 2.5 x block_size."""
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    m = _model(cfg, seed=3)
    ids = [int(i) for i in np.random.default_rng(4).integers(0, cfg.vocab_size, 20)]
    cached, free = G.next_logits(m, use_cache=True), G.next_logits(m, use_cache=False)
    with minigrad.no_grad():
        for n in range(3, len(ids) + 1):
            a, b = cached(ids[:n]), free(ids[:n])
            ref = m(np.asarray([ids[max(0, n - cfg.block_size):n]]))[0].numpy()[0, -1]
            assert np.allclose(b, ref, rtol=0, atol=_tolerance(cfg, ref))   # head: one row vs all rows
            assert np.allclose(a, b, rtol=0, atol=_tolerance(cfg, b)), (n, np.abs(a - b).max())


def test_without_the_native_library_the_decoder_runs_the_forward(monkeypatch):
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=16)
    m = _model(cfg)
    dec = Decoder(m)
    assert not dec.fast
    seq = np.array([[1, 5, 7, 2]])
    with minigrad.no_grad():
        dec.prefill(seq[:, :2])
        a = np.array(dec.step(seq[:, 2]))
        b = m(seq[:, :3], last_only=True)[0].numpy()[:, -1]
    assert np.allclose(a, b, rtol=0, atol=_tolerance(cfg, b))


def _step_peak(n_embd, steps=12):
    """The largest number of bytes a decode step allocates at its peak (tracemalloc sees NumPy's
    array buffers), after warm-up steps."""
    cfg = GPTConfig(vocab_size=11, block_size=40, n_layer=2, n_head=2, n_embd=n_embd)
    m = _model(cfg)
    dec = Decoder(m)
    with minigrad.no_grad():
        dec.prefill(np.array([[1, 2, 3]]))
        for _ in range(5):
            dec.step([4])
        ids = [id(b) for b in dec.buffers()]
        peaks = []
        tracemalloc.start()
        try:
            for _ in range(steps):
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                dec.step([5])
                peaks.append(tracemalloc.get_traced_memory()[1] - before)
        finally:
            tracemalloc.stop()
    assert [id(b) for b in dec.buffers()] == ids   # the cache and scratch buffers are the same arrays
    assert dec.length == 3 + 5 + steps
    return max(peaks)


def test_a_decode_step_allocates_no_array():
    """A step's peak allocation does not grow with the model: going from n_embd 32 to 512 would add
    at least one (1, 512) float32 array (2 KiB) per temporary; what remains is Python objects."""
    small, big = _step_peak(32), _step_peak(512)
    assert big < small + 512 * 4 // 2, (small, big)


def test_prefill_runs_the_cache_free_attention_and_keeps_k_and_v():
    """A prefill into an empty cache gives the cache-free forward's logits bit for bit (the same
    fused attention op), and stores the keys and values that token-by-token extension stores."""
    from minigrad.models.gpt import KVCache

    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    m = _model(cfg, seed=5)
    seq = np.random.default_rng(6).integers(0, cfg.vocab_size, (2, 6))
    with minigrad.no_grad():
        full = m(seq)[0].numpy()
        pre = KVCache(cfg, 2)
        got = m(seq, cache=pre)[0].numpy()
        one = KVCache(cfg, 2)
        m(seq[:, :1], cache=one)
        for t in range(1, 6):
            m(seq[:, t:t + 1], cache=one)
    assert np.array_equal(got, full)
    assert pre.length == one.length == 6
    a, b = pre.buf[:, :, :, :, :6], one.buf[:, :, :, :, :6]
    assert np.allclose(a, b, rtol=0, atol=_tolerance(cfg, b))
    assert not pre.buf[:, :, :, :, 6:].any()   # nothing written past the prefill


@pytest.mark.parametrize("scheme", ["int8", "bfloat16"])
def test_decode_steps_with_quantized_weights_equal_the_quantized_forward(scheme):
    """With nn.quantize_ (Linears and the tied head's lm_head copy), the step calls the same
    kernels as the quantized model's forward: equal up to the attention's summation order."""
    from minigrad.nn import quantize_

    cfg = GPTConfig(vocab_size=17, block_size=10, n_layer=2, n_head=2, n_embd=32, bias=True)
    m = quantize_(_model(cfg, seed=8), scheme)
    assert m.lm_head is not None
    seq = np.random.default_rng(9).integers(0, cfg.vocab_size, (1, cfg.block_size))
    dec = Decoder(m)
    assert dec.fast
    with minigrad.no_grad():
        got = [np.array(dec.prefill(seq[:, :2]))] + [np.array(dec.step(seq[:, t])) for t in range(2, 10)]
        ref = [m(seq[:, :t + 1], last_only=True)[0].numpy()[:, -1] for t in range(1, 10)]
    for t, (a, b) in enumerate(zip(got, ref)):
        assert np.allclose(a, b, rtol=0, atol=_tolerance(cfg, b)), (t, np.abs(a - b).max())
    f32 = _model(cfg, seed=8)
    with minigrad.no_grad():
        far = np.abs(f32(seq, last_only=True)[0].numpy()[:, -1] - ref[-1]).max()
    assert far > _tolerance(cfg, ref[-1])   # the quantized weights are really in use
