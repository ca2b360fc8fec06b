"""Sampling (temperature, top-k, top-p), KV-cache decoding == cache-free decoding, `minigrad generate`."""
import numpy as np
import pytest

from minigrad.models import generate as G
from minigrad.models.gpt import GPT, GPTConfig
from minigrad.models.tokenize import CharTokenizer

CFG = GPTConfig(vocab_size=13, block_size=10, n_layer=2, n_head=2, n_embd=16)


def _model(seed=0):
    m = GPT(CFG, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for p in m.parameters():  # larger weights than the init, so the distribution is far from uniform
        p.data += (0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    return m


def test_sample_token_greedy_and_truncations():
    logits = np.array([0.1, 3.0, 2.9, -1.0, 2.0], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert G.sample_token(logits, 0.0, None, 1.0, rng) == 1
    assert all(G.sample_token(logits, 1.0, 1, 1.0, rng) == 1 for _ in range(50))
    assert {G.sample_token(logits, 5.0, 2, 1.0, rng) for _ in range(200)} == {1, 2}
    assert all(G.sample_token(logits, 1.0, None, 1e-6, rng) == 1 for _ in range(50))
    # probs ~ (.02, .41, .37, .01, .15): top-p 0.7 keeps the smallest set reaching 0.7 = {1, 2}
    assert {G.sample_token(logits, 1.0, None, 0.7, rng) for _ in range(300)} == {1, 2}


def test_sample_token_follows_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(1)
    n = 6000
    counts = np.bincount([G.sample_token(logits, 1.0, None, 1.0, rng) for _ in range(n)], minlength=3)
    expected = n * np.array([0.5, 0.3, 0.2])
    sd = np.sqrt(n * np.array([0.5, 0.3, 0.2]) * (1 - np.array([0.5, 0.3, 0.2])))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    # temperature 2 flattens: p ~ sqrt(p) normalised
    flat = np.sqrt([0.5, 0.3, 0.2]) / np.sqrt([0.5, 0.3, 0.2]).sum()
    counts = np.bincount([G.sample_token(logits, 2.0, None, 1.0, rng) for _ in range(n)], minlength=3)
    assert np.all(np.abs(counts - n * flat) < 5 * np.sqrt(n * flat * (1 - flat))), counts


@pytest.mark.parametrize("bad, msg", [
    (dict(temperature=-1), "temperature"), (dict(top_k=0), "top-k"), (dict(top_p=0.0), "top-p"),
    (dict(top_p=1.5), "top-p"),
])
def test_bad_sampling_parameters(bad, msg):
    kw = {"temperature": 1.0, "top_k": None, "top_p": 1.0, **bad}
    with pytest.raises(G.GenerateError, match=msg):
        G.check_sampling(kw["temperature"], kw["top_k"], kw["top_p"])


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 1.0), (0.8, 5, 0.9), (0.0, None, 1.0)])
def test_cached_decoding_equals_cache_free_decoding(temperature, top_k, top_p):
    m = _model()
    prompt = [3, 1, 4]
    # 3 + 20 tokens > block_size 10: covers both the incremental phase and the sliding window
    a = G.generate(m, prompt, 20, temperature, top_k, top_p, seed=5, use_cache=True)
    b = G.generate(m, prompt, 20, temperature, top_k, top_p, seed=5, use_cache=False)
    assert a == b and len(a) == 23 and a[:3] == prompt
    if temperature:
        c = G.generate(m, prompt, 20, temperature, top_k, top_p, seed=6, use_cache=True)
        assert c != a  # the seed matters


def test_cache_feeds_one_token_per_step_while_the_sequence_fits():
    from minigrad.models.decode import Decoder

    m = _model()
    fed = []
    real_forward, real_step = m.forward, Decoder.step

    def spy(idx, *a, **k):
        fed.append((np.asarray(idx).shape[1], k.get("cache") is not None))
        return real_forward(idx, *a, **k)

    def step_spy(self, tokens):
        fed.append(("step", self.length))
        return real_step(self, tokens)

    m.forward = spy
    Decoder.step = step_spy
    try:
        G.generate(m, [1, 2], 12, 1.0, None, 1.0, seed=0, use_cache=True)
    finally:
        Decoder.step = real_step
    # prefill 2 through the forward, then one decode step per token at positions 2..9 until
    # block_size 10 is cached; then the cache-free forward over the last 10 tokens
    assert fed[:9] == [(2, True)] + [("step", pos) for pos in range(2, 10)]
    assert fed[9:] == [(10, False)] * 3
    fed.clear()
    G.generate(m, [1, 2], 3, 1.0, None, 1.0, seed=0, use_cache=False)
    assert fed == [(2, False), (3, False), (4, False)]


def test_generate_restores_training_mode():
    m = _model()
    m.train()
    G.generate(m, [1], 2, 1.0, None, 1.0)
    assert m.training


def test_text_stream_holds_back_incomplete_utf8():
    class Bytes:  # a byte-level tokenizer: ids are bytes
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    out = []
    s = G.TextStream(Bytes(), out.append)
    for b in "h\u00e9!".encode("utf-8"):
        s(b)
    assert out == ["h", "\u00e9", "!"]


def _checkpoint(tmp_path):
    from minigrad.models.checkpoint import save_checkpoint

    tok = CharTokenizer("abcdefghijkl ")
    m = _model()
    save_checkpoint(tmp_path, 1, {"model": dict(m.state_dict())},
                    {"model": "gpt", "model_config": CFG.to_dict(), "tokenizer": tok.state()})
    return m, tok


def test_generate_cli_streams_the_same_text_with_and_without_cache(tmp_path, capsys):
    pytest.importorskip("safetensors", reason="checkpoints need the optional 'safetensors' package")
    from minigrad.models import cli

    m, tok = _checkpoint(tmp_path)
    outs = []
    for extra in ([], ["--no-cache"]):
        assert cli.main(["generate", "--ckpt", str(tmp_path), "--prompt", "abc", "--max-new-tokens", "15",
                         "--seed", "3", "--top-k", "4"] + extra) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]
    assert outs[0].startswith("abc") and len(outs[0]) == 3 + 15 + 1
    ids = G.generate(m, tok.encode("abc"), 15, 0.8, 4, 1.0, seed=3)
    assert outs[0] == tok.decode(ids) + "\n"


def test_generate_cli_rejects_out_of_vocabulary_prompts(tmp_path, capsys):
    pytest.importorskip("safetensors", reason="checkpoints need the optional 'safetensors' package")
    from minigrad.models import cli

    _checkpoint(tmp_path)
    assert cli.main(["generate", "--ckpt", str(tmp_path), "--prompt", "abXc\u20ac"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "outside the 13-character vocabulary: 'X', '\u20ac'" in err
    assert cli.main(["generate", "--ckpt", str(tmp_path / "none")]) == 1
    assert "no checkpoint" in capsys.readouterr().err
