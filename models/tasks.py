"""Synthetic sequence-to-sequence tasks, generated on the fly, with a fixed held-out set.

    reverse   "hello"        -> "olleh"       lower-case letters, lengths 1..16 (the default)
    sort      "3141592"      -> "1123459"     digits, lengths 1..16
    add       "123456+78"    -> "123534"      two numbers of 1..6 digits each

One character vocabulary serves every task: <pad> <bos> <eos>, then digits, '+', letters.
The held-out set is HELDOUT_SIZE distinct sources drawn from a fixed seed (independent of the
training seed); training draws never produce a held-out source. So that short lengths stay
trainable, the held-out set takes at most half of the possible sources of any one length class
(e.g. 13 of the 26 one-letter strings).
"""
from __future__ import annotations

import numpy as np

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
CHARS = "0123456789+abcdefghijklmnopqrstuvwxyz"
IGNORE = -100            # target value the loss skips (padding after <eos>)
HELDOUT_SIZE = 1000
HELDOUT_SEED = 0x5E95E0
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


class TaskError(ValueError):
    """An unknown task or text outside the vocabulary; one line."""


class Vocab:
    def __init__(self, chars: str = CHARS):
        self.itos = list(SPECIALS) + list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.chars = chars

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        bad = sorted({c for c in text if c not in self.stoi or c in SPECIALS})
        if bad:
            raise TaskError(f"characters {''.join(bad)!r} are not in the vocabulary {self.chars!r}")
        return [self.stoi[c] for c in text]

    def decode(self, ids) -> str:
        """Characters up to the first <eos>; <pad> and <bos> are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return "".join(out)

    def state(self) -> dict:
        return {"specials": list(SPECIALS), "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> Vocab:
        if list(state.get("specials", [])) != list(SPECIALS):
            raise TaskError(f"vocabulary specials {state.get('specials')} differ from {list(SPECIALS)}")
        return cls(state["chars"])


class Task:
    """sample(rng) -> (source, target, length class); n_sources(class) counts that class."""

    name = ""
    max_src_len = 0          # characters, without specials
    max_tgt_len = 0

    def sample(self, rng: np.random.Generator) -> tuple[str, str, object]:
        raise NotImplementedError

    def n_sources(self, key) -> int:
        raise NotImplementedError


class Reverse(Task):
    name, max_src_len, max_tgt_len = "reverse", 16, 16

    def sample(self, rng):
        n = int(rng.integers(1, self.max_src_len + 1))
        s = "".join(LETTERS[i] for i in rng.integers(0, 26, n))
        return s, s[::-1], n

    def n_sources(self, key):
        return 26 ** key


class Sort(Task):
    name, max_src_len, max_tgt_len = "sort", 16, 16

    def sample(self, rng):
        n = int(rng.integers(1, self.max_src_len + 1))
        s = "".join(DIGITS[i] for i in rng.integers(0, 10, n))
        return s, "".join(sorted(s)), n

    def n_sources(self, key):
        return 10 ** key


class Add(Task):
    """a+b with a, b of 1..6 digits (digit counts uniform, then the number uniform among them)."""

    name, max_src_len, max_tgt_len = "add", 13, 7
    max_digits = 6

    @staticmethod
    def _number(rng, digits: int) -> int:
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        return int(rng.integers(lo, 10 ** digits))

    def sample(self, rng):
        da, db = (int(d) for d in rng.integers(1, self.max_digits + 1, 2))
        a, b = self._number(rng, da), self._number(rng, db)
        return f"{a}+{b}", str(a + b), (da, db)

    def n_sources(self, key):
        count = lambda d: 10 if d == 1 else 9 * 10 ** (d - 1)
        return count(key[0]) * count(key[1])


TASKS = {t.name: t for t in (Reverse(), Sort(), Add())}
DEFAULT_TASK = "reverse"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


class TaskData:
    """A task's vocabulary, its fixed held-out set, and batches of encoded examples."""

    def __init__(self, task: Task, vocab: Vocab | None = None, heldout_size: int = HELDOUT_SIZE):
        self.task = task
        self.vocab = vocab or Vocab()
        self.heldout = self._make_heldout(heldout_size)          # [(source, target)]
        self._heldout_sources = {s for s, _ in self.heldout}
        self.max_len = max(task.max_src_len, task.max_tgt_len + 1)   # positions the model needs

    def _make_heldout(self, size: int) -> list[tuple[str, str]]:
        rng = np.random.default_rng([HELDOUT_SEED, sorted(TASKS).index(self.task.name)])
        seen, per_class, out = set(), {}, []
        while len(out) < size:
            src, tgt, key = self.task.sample(rng)
            if src in seen or per_class.get(key, 0) >= self.task.n_sources(key) // 2:
                continue
            seen.add(src)
            per_class[key] = per_class.get(key, 0) + 1
            out.append((src, tgt))
        return out

    def sample_train(self, rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
        """n fresh training examples, none of them in the held-out set."""
        out = []
        while len(out) < n:
            src, tgt, _ = self.task.sample(rng)
            if src not in self._heldout_sources:
                out.append((src, tgt))
        return out

    def batch(self, split: str, rng: np.random.Generator, n: int):
        if split == "train":
            pairs = self.sample_train(rng, n)
        elif split == "val":
            pairs = [self.heldout[i] for i in rng.integers(0, len(self.heldout), n)]
        else:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return self.encode_pairs(pairs)

    def encode_sources(self, sources: list[str]) -> np.ndarray:
        """(B, S) int64, right-padded with PAD to the longest source."""
        rows = [self.vocab.encode(s) for s in sources]
        S = max(1, max(len(r) for r in rows))
        out = np.full((len(rows), S), PAD, np.int64)
        for i, r in enumerate(rows):
            out[i, :len(r)] = r
        return out

    def encode_pairs(self, pairs):
        """-> src (B, S), decoder input (B, T) = <bos> target, decoder target (B, T) = target <eos>.

        Decoder inputs are padded with PAD, decoder targets with IGNORE.
        """
        src = self.encode_sources([s for s, _ in pairs])
        tgts = [self.vocab.encode(t) for _, t in pairs]
        T = max(len(t) for t in tgts) + 1
        dec_in = np.full((len(pairs), T), PAD, np.int64)
        dec_tgt = np.full((len(pairs), T), IGNORE, np.int64)
        for i, t in enumerate(tgts):
            dec_in[i, :len(t) + 1] = [BOS] + t
            dec_tgt[i, :len(t) + 1] = t + [EOS]
        return src, dec_in, dec_tgt


def expected_target_tokens(task: Task) -> float:
    """Rough mean decoder length (for a tokens/s figure); exactness is not needed."""
    return (task.max_tgt_len + 1) / 2 + 1 if task.name != "add" else 6.0


__all__ = [
    "BOS",
    "DEFAULT_TASK",
    "EOS",
    "IGNORE",
    "PAD",
    "TASKS",
    "Task",
    "TaskData",
    "TaskError",
    "Vocab",
    "get_task",
]
