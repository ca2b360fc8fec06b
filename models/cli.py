"""`minigrad train`, `minigrad generate`, `minigrad bench train`: argument parsing and handlers.

The top-level CLI calls `add_subcommands(subparsers)`; each registered parser sets `func`, a
handler taking the parsed namespace and returning an exit code. Imports of the engine, the model
and the data code happen inside the handlers so `--help` stays instant. Standalone:
`python -m minigrad.models.cli train ...`.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_OUT = "out-shakespeare"


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments give one line (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fail(cmd: str, message: str, code: int = 1) -> int:
    print(f"minigrad {cmd}: error: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- argument definitions

def _add_train_args(p: argparse.ArgumentParser) -> None:
    # Model and training flags default to None so --resume can tell "given" from "not given";
    # the defaults (nanoGPT's CPU configuration) are filled in by the handler.
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="PATH", help="a UTF-8 text file (default: Shakespeare, fetched once)")
    g.add_argument("--tokenizer", choices=["char", "bpe"], help="char (default) or bpe (needs tokenizers)")
    g.add_argument("--vocab-size", type=int, metavar="N", help="BPE vocabulary size")
    g = p.add_argument_group("model (default: 4 layers, 4 heads, n_embd 128, block 64, dropout 0, no bias)")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-head", type=int)
    g.add_argument("--n-embd", type=int)
    g.add_argument("--block-size", type=int)
    g.add_argument("--dropout", type=float)
    g.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None)
    g = p.add_argument_group("optimisation (AdamW, betas 0.9/0.99, warmup + cosine)")
    g.add_argument("--max-iters", type=int, help="optimiser steps (default 2000)")
    g.add_argument("--batch-size", type=int, help="sequences per micro-batch (default 12)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    g.add_argument("--min-lr", type=float, help="cosine floor (default 1e-4)")
    g.add_argument("--warmup-iters", type=int, help="linear warmup steps (default 100)")
    g.add_argument("--lr-decay-iters", type=int, help="cosine length (default: max-iters)")
    g.add_argument("--weight-decay", type=float, help="on >=2-D weights only (default 0.1)")
    g.add_argument("--grad-clip", type=float, help="global grad-norm clip, 0 = off (default 1.0)")
    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval-interval", type=int, help="evaluate and checkpoint every N steps (default 250)")
    g.add_argument("--eval-iters", type=int, help="batches per split per evaluation (default 20)")
    g.add_argument("--final-eval-iters", type=int, help="batches per split for the final evaluation (default 200)")
    g.add_argument("--log-interval", type=int, help="write a log.jsonl record every N steps (default 1)")
    g.add_argument("--out-dir", default=DEFAULT_OUT, help=f"checkpoints, log.jsonl, loss.png (default {DEFAULT_OUT})")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out-dir")
    g.add_argument("--force", action="store_true", help="start afresh even if --out-dir holds a checkpoint")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="seeds init, batches and eval (default 1337)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="data-parallel workers (processes on Linux, else threads); each computes 1/N of "
                        "every micro-batch (default 2)")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--profile", action="store_true",
                   help="print the phase breakdown, tokens/s and achieved FLOP/s against this machine's matmul peak")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=DEFAULT_OUT, help=f"run or checkpoint directory (default {DEFAULT_OUT})")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each token")
    p.add_argument("--profile", action="store_true", help="print prefill and per-token decode times (stderr)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=40, help="timed steps (at least 30; default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--workers", type=int, default=None,
                   help="minigrad's data-parallel workers (default: as `minigrad train`, 2; 1 = one process)")
    p.add_argument("--gen-context", type=int, default=256, help="context length for the tokens/s figures")
    p.add_argument("--no-gen", action="store_true", help="skip the generation figures")
    p.add_argument("--seed", type=int, default=1337)


def add_subcommands(subparsers, bench_subparsers=None) -> None:
    """Register train, generate and bench train.

    If the caller already has a `bench` parser with its own subparsers, pass those as
    bench_subparsers and `train` is added there; otherwise a `bench` command is created.
    """
    p = subparsers.add_parser("train", help="train a GPT (default: Shakespeare, nanoGPT's CPU config)",
                              description="Train a character-level (or BPE) GPT. Last line: val_loss=<float>.")
    _add_train_args(p)
    from minigrad.models.seq2seq_train import add_train_args as add_seq2seq_args  # stdlib-only import
    add_seq2seq_args(p)
    p.set_defaults(func=run_train)
    p = subparsers.add_parser("generate", help="sample text from a trained GPT checkpoint",
                              description="Stream text sampled from a checkpoint, with a KV cache.")
    _add_generate_args(p)
    p.set_defaults(func=run_generate)
    if bench_subparsers is None:
        bench = subparsers.add_parser("bench", help="benchmarks")
        bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="{train}", required=True)
    p = bench_subparsers.add_parser("train", help="median GPT train-step time (and PyTorch's, if importable)",
                                    description="Last line: median_step_ms=<float>.")
    _add_bench_args(p)
    p.set_defaults(func=run_bench_train)


# --------------------------------------------------------------------------- handlers

def _check_device(device: str) -> str | None:
    """None if usable, else a one-line reason."""
    if device != "cuda":
        return None
    try:
        import cupy
    except Exception:
        return "--device cuda needs CuPy (pip install cupy-cuda12x) and an NVIDIA GPU; CuPy is not importable"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"--device cuda: CuPy cannot see a GPU ({type(e).__name__})"
    return None if n > 0 else "--device cuda: CuPy sees no GPU"


def run_train(args) -> int:
    from minigrad.models import seq2seq_train
    from minigrad.models import train as train_gpt

    train_gpt.tune_malloc()               # both models: step temporaries stay in glibc's heap
    code = seq2seq_train.dispatch(args)  # --model seq2seq runs there; None means the GPT job
    if code is not None:
        return code

    problem = _check_device(args.device)
    if problem:
        return _fail("train", problem)
    try:
        result = train_gpt.main(args)
    except train_gpt.USER_ERRORS as e:
        return _fail("train", str(e))
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C inside it
        print("\nminigrad train: interrupted; nothing saved (the last checkpoint, if any, is kept)", file=sys.stderr)
        return 130
    if result.get("interrupted"):
        return 130
    print(f"val_loss={result['val_loss']:.4f}")
    return 0


def run_generate(args) -> int:
    from minigrad.models import generate as sample_gpt

    problem = _check_device(args.device)
    if problem:
        return _fail("generate", problem)
    try:
        sample_gpt.main(args)
    except sample_gpt.USER_ERRORS as e:
        return _fail("generate", str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def run_bench_train(args) -> int:
    from minigrad.models import bench
    from minigrad.models.train import tune_malloc

    if args.steps < 30:
        return _fail("bench train", f"--steps must be at least 30, got {args.steps}")
    if args.workers is not None and args.workers < 1:
        return _fail("bench train", f"--workers must be at least 1, got {args.workers}")
    tune_malloc()  # for both minigrad and torch: they share this process
    return bench.main(args)


def main(argv=None) -> int:
    parser = OneLineParser(prog="minigrad", description="minigrad language-model commands")
    sub = parser.add_subparsers(dest="command", metavar="{train,generate,bench}", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
