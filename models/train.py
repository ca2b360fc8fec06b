"""`minigrad train` for the GPT: its flags, and the job they describe (data, model, Trainer run).

The flags of the model and of TrainConfig default to None so that --resume can tell "given" from
"not given": a resumed run takes the rest from its checkpoint, a fresh one from the dataclasses'
defaults (nanoGPT's CPU configuration). `--model seq2seq` is the same command on another model
(models/seq2seq_train.py). The last line printed is `val_loss=<float>`.

Only the standard library is imported at module level: models/cli.py imports this module to
build its parser, and `minigrad --help` must stay instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigrad.models.cli_common import DEFAULT_OUT, given, resume_command, run_training, start_or_resume
from minigrad.models.train_config import DTYPES, TrainConfig, TrainError

DEFAULT_DATA = {"data": None, "tokenizer": "char", "vocab_size": None}
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags of `minigrad train` (the GPT's, shared by --model seq2seq where they apply)."""
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
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the checkpoint with the best val loss beside the latest (default on; "
                        "`minigrad generate --best` samples from it)")
    g.add_argument("--resume", action="store_true", help="continue the checkpoint in --out-dir")
    g.add_argument("--force", action="store_true", help="start afresh even if --out-dir holds a checkpoint")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="seeds init, batches and eval (default 1337)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="data-parallel workers (processes on Linux, else threads); each computes 1/N of "
                        "every micro-batch (default 2; 1 on cuda; on several ranks 1 when they fill the cores)")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument("--dtype", choices=DTYPES,
                   help="float32 (default), or bfloat16 / float16: the forward under minigrad.autocast, weights "
                        "float32; float16 with a dynamic loss scale (skipped steps are logged). Saved in the "
                        "checkpoint: --resume keeps it unless --dtype is given again")
    from minigrad.models.launch import add_dist_args   # --dist, --dist-timeout (several ranks)
    add_dist_args(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--profile", action="store_true",
                   help="print the phase breakdown, tokens/s and achieved FLOP/s against this machine's matmul peak")


def user_errors() -> tuple:
    """The exceptions the job reports in one line (a bad flag, checkpoint, data file or vocabulary)."""
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data import DataError
    from minigrad.models.memory import ModelTooLargeError
    from minigrad.models.tokenize import TokenizerError

    return (TrainError, CheckpointError, DataError, TokenizerError, ModelTooLargeError)


def run(args) -> int:
    """The handler: the GPT job from parsed flags; prints `val_loss=...` last; returns the exit code."""
    return run_training(main, args, args.out_dir, user_errors(), lambda result: f"val_loss={result['val_loss']:.4f}")


def main(args) -> dict:
    """Run `minigrad train` from parsed arguments; returns Trainer.run()'s summary."""
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data import load_data
    from minigrad.models.data_parallel import split_rows
    from minigrad.models.gpt import GPT, GPTConfig
    from minigrad.models.trainer import Trainer
    from minigrad import distributed

    out_dir = Path(args.out_dir)
    given_data = given(args, DEFAULT_DATA)
    ckpt, train_opts, given_model = start_or_resume(args, out_dir, "gpt", "not a GPT", MODEL_FLAGS,
                                                    check_saved=check_saved_gpt)
    if ckpt is not None:
        data_opts = dict(ckpt.meta.get("data", DEFAULT_DATA), **given_data)
        model_opts = {k: v for k, v in ckpt.meta["model_config"].items() if k != "vocab_size"}
    else:
        data_opts = dict(DEFAULT_DATA, **given_data)
        model_opts = given_model
    if given_data.get("data") is not None:
        data_opts["data"] = str(Path(given_data["data"]).resolve())  # resumable from any directory
    if data_opts["tokenizer"] == "char" and data_opts.get("vocab_size") is not None:
        raise TrainError("--vocab-size applies to --tokenizer bpe only")
    cfg = TrainConfig(**train_opts)
    cfg.check()
    data = load_data(data_opts["data"], data_opts["tokenizer"], data_opts["vocab_size"])
    try:
        mcfg = GPTConfig(vocab_size=data.vocab_size, **model_opts)
    except ValueError as e:
        raise TrainError(str(e)) from None
    data.check_block_size(mcfg.block_size)
    if ckpt is not None and ckpt.meta.get("tokenizer") != data.tokenizer.state():
        raise CheckpointError(f"checkpoint {ckpt.path} was trained on another vocabulary "
                              f"({ckpt.meta['model_config']['vocab_size']} tokens) than {data.source} gives "
                              f"({data.vocab_size} tokens)")
    check_gpt_fits(mcfg, cfg)
    model = GPT(mcfg, seed=cfg.seed)
    if args.device != "cpu":
        model.to(args.device)
    B, T = cfg.batch_size * distributed.size(), mcfg.block_size   # the global batch: per-rank batch x ranks
    meta = {"model": "gpt", "model_config": mcfg.to_dict(), "tokenizer": data.tokenizer.state(),
            "data": data_opts}

    def batches(split, rng):
        return data.get_batch(split, B, T, rng)

    def loss_fn(model, batch):
        return model(batch[0], batch[1])[1]

    timer = None
    if getattr(args, "profile", False):  # phase breakdown, tokens/s, FLOP/s (minigrad/profiler/timers.py)
        from minigrad.profiler import PhaseTimer
        timer = PhaseTimer.for_device(args.device)
    trainer = Trainer(model, batches, loss_fn, cfg, out_dir, meta=meta, tokens_per_batch=B * T,
                      quiet=getattr(args, "quiet", False), timer=timer, split=split_rows,
                      resume_hint=resume_command(out_dir))
    if ckpt is not None:
        trainer.load(ckpt)
        if trainer.step >= cfg.max_iters:
            raise TrainError(f"checkpoint {ckpt.path} is at step {trainer.step}, already at --max-iters "
                             f"{cfg.max_iters}; raise --max-iters to train further")
    if not trainer.quiet:
        start = f"resuming at step {trainer.step}" if ckpt else "from scratch"
        print(f"GPT {model.num_params() / 1e6:.2f}M parameters, vocab {data.vocab_size} ({data.source}), "
              f"train {len(data.train):,} / val {len(data.val):,} tokens, {start}", file=sys.stderr)
    result = trainer.run()
    if timer is not None:
        print(timer.summary(tokens_per_step=B * T * cfg.grad_accum, device=args.device), flush=True)
    return result


def check_saved_gpt(ckpt) -> None:
    """A checkpoint's model_config must describe the weights it stores (a hand-edited meta.json is
    caught here, before anything is allocated from it)."""
    from minigrad.models.checkpoint import CheckpointError, check_param_count
    from minigrad.models.gpt import GPTConfig
    from minigrad.models.memory import gpt_params

    try:
        saved = GPTConfig.from_dict(ckpt.meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: model config is invalid ({e})") from None
    check_param_count(ckpt, gpt_params(saved))


def check_gpt_fits(mcfg, cfg: TrainConfig) -> None:
    """Before the model is allocated: a training step's memory (a lower bound from the config) must
    fit in what is available."""
    from minigrad.models.memory import check_fits, gpt_train_bytes

    needed, dominant = gpt_train_bytes(mcfg, cfg.batch_size, cfg.workers)
    check_fits(needed, f"training this GPT (block_size {mcfg.block_size}, batch {cfg.batch_size}, "
               f"{mcfg.n_layer} layers of {mcfg.n_embd})", dominant,
               "lower --block-size, --batch-size, --n-layer or --n-embd")
