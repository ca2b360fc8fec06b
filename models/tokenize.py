"""Tokenizers for the language-model data: characters (default) or byte-level BPE.

Both map text <-> 1-D integer id arrays and round-trip through a JSON-able `state()`
so a checkpoint can rebuild the exact tokenizer it was trained with.
"""
from __future__ import annotations

import numpy as np


class TokenizerError(ValueError):
    """Bad tokenizer input: an out-of-vocabulary character, an unknown kind, a bad state."""


class CharTokenizer:
    """One id per character; the vocabulary is the sorted set of characters of the corpus."""

    kind = "char"

    def __init__(self, chars):
        chars = list(chars)
        if not chars:
            raise TokenizerError("character vocabulary is empty")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("character vocabulary must be distinct single characters")
        self.chars = chars
        self._index = {c: i for i, c in enumerate(chars)}
        # code point -> id lookup table for fast vectorised encoding; -1 marks unknown.
        top = max(ord(c) for c in chars) + 1
        self._table = np.full(top, -1, dtype=np.int64)
        for i, c in enumerate(chars):
            self._table[ord(c)] = i

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """text -> (len(text),) int64 ids; raises TokenizerError naming unknown characters."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        inside = codes < self._table.shape[0]
        ids[inside] = self._table[codes[inside]]
        if (ids < 0).any():
            bad = sorted({text[i] for i in np.flatnonzero(ids < 0)[:1000]})
            shown = ", ".join(repr(c) for c in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise TokenizerError(
                f"text has {len(bad)} character(s) outside the {self.vocab_size}-character vocabulary: {shown}"
            )
        return ids

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TokenizerError(f"token id out of range [0, {self.vocab_size})")
        return "".join(self.chars[int(i)] for i in ids)

    def state(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class BPETokenizer:
    """Byte-level BPE from the `tokenizers` library: never out-of-vocabulary."""

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok

    @staticmethod
    def _lib():
        try:
            import tokenizers
        except ImportError:
            raise TokenizerError(
                "--tokenizer bpe needs the 'tokenizers' package: pip install tokenizers"
            ) from None
        return tokenizers

    @classmethod
    def train(cls, text: str, vocab_size: int) -> "BPETokenizer":
        lib = cls._lib()
        if vocab_size < 257:
            raise TokenizerError(f"--vocab-size must be at least 257 for byte-level BPE, got {vocab_size}")
        tok = lib.Tokenizer(lib.models.BPE())
        tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_chunks(text), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        out = [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(_chunks(text)))]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise TokenizerError(f"token id out of range [0, {self.vocab_size})")
        return self._tok.decode(ids)

    def state(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self._tok.to_str()}


def _chunks(text: str, size: int = 1 << 16):
    """Split text at newlines into pieces of about `size` chars (keeps encoding fast and bounded)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def tokenizer_from_state(state) -> CharTokenizer | BPETokenizer:
    """Rebuild a tokenizer from `state()`; raises TokenizerError on an unknown or malformed state."""
    if not isinstance(state, dict) or "kind" not in state:
        raise TokenizerError("tokenizer state is missing or malformed")
    if state["kind"] == "char":
        chars = state.get("chars")
        if not isinstance(chars, str):
            raise TokenizerError("char tokenizer state has no 'chars' string")
        return CharTokenizer(chars)
    if state["kind"] == "bpe":
        lib = BPETokenizer._lib()
        try:
            return BPETokenizer(lib.Tokenizer.from_str(state["tokenizer_json"]))
        except Exception as e:  # the library raises its own exception types
            raise TokenizerError(f"BPE tokenizer state is corrupt: {e}") from None
    raise TokenizerError(f"unknown tokenizer kind {state['kind']!r} (expected 'char' or 'bpe')")
