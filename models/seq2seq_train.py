"""`minigrad train --model seq2seq --task NAME [--beam N]`: train the encoder-decoder on a synthetic task.

Reuses the GPT's loop (models/trainer.py): AdamW with warmup + cosine, progress bar,
log.jsonl, loss.png, crash-safe checkpoints, --resume, Ctrl-C. After training it decodes the
fixed held-out set (greedy, or beam search with --beam N) and prints `exact_match=<fraction>`
as its last line. Resuming a run that already reached --max-iters only re-evaluates it (e.g. with
another --beam).

Only the standard library is imported at module level: models/cli.py imports this module to
build its parser, and `minigrad --help` must stay instant.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minigrad.models.cli_common import DEFAULT_OUT, fail, resume_command, run_training, start_or_resume
from minigrad.models.train_config import TrainConfig, TrainError

# Defaults for the seq2seq job (the GPT's flags are shared; these replace the GPT defaults).
MODEL_DEFAULTS = {"n_layer": 2, "n_head": 4, "n_embd": 128, "dropout": 0.0, "bias": True}
TRAIN_DEFAULTS = {"max_iters": 1500, "batch_size": 64, "lr": 2e-3, "min_lr": 1e-4, "warmup_iters": 100,
                  "weight_decay": 0.01, "eval_interval": 250, "eval_iters": 5, "final_eval_iters": 20}
# add diverges from the shared lr 2e-3 (stuck near loss 1.6); at 1e-3 it keeps improving past 1500 steps
TASK_TRAIN_DEFAULTS = {"add": {"lr": 1e-3, "max_iters": 5000}}
MODEL_FLAGS = tuple(MODEL_DEFAULTS)
GPT_ONLY_FLAGS = ("data", "tokenizer", "vocab_size", "block_size")
EVAL_BATCH = 250
SHOW_EXAMPLES = 3


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The flags `minigrad train` gains for the encoder-decoder."""
    g = p.add_argument_group("encoder-decoder (--model seq2seq)")
    g.add_argument("--model", choices=["gpt", "seq2seq"], default="gpt",
                   help="gpt (default) or seq2seq, the encoder-decoder on a synthetic task; its defaults: "
                        "2 encoder + 2 decoder layers, 4 heads, n_embd 128, batch 64, lr 2e-3 -> 1e-4, "
                        "weight decay 0.01, 1500 steps (add: lr 1e-3, 5000 steps)")
    g.add_argument("--task", choices=["reverse", "sort", "add"], default=None,
                   help="seq2seq task (default reverse); --out-dir defaults to out-seq2seq-TASK")
    g.add_argument("--beam", type=int, default=None, metavar="N",
                   help="beam width for the held-out evaluation (default 1 = greedy)")


def dispatch(args) -> int | None:
    """Run the seq2seq job if asked for (returns its exit code); None lets the GPT job run."""
    if getattr(args, "model", "gpt") != "seq2seq":
        wrong = [f"--{k}" for k in ("task", "beam") if getattr(args, k, None) is not None]
        if wrong:
            return fail("train", f"{' and '.join(wrong)} apply to --model seq2seq only", code=2)
        return None
    return run(args)


def run(args) -> int:
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.memory import ModelTooLargeError
    from minigrad.models.tasks import TaskError

    return run_training(main, args, run_dir(args), (TrainError, CheckpointError, TaskError, ModelTooLargeError),
                        lambda result: f"exact_match={result['exact_match']:.4f}")


def main(args) -> dict:
    """Train (or resume), then evaluate; returns Trainer.run()'s summary plus exact_match."""
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data_parallel import split_rows_by_targets
    from minigrad.models.seq2seq import Seq2Seq, Seq2SeqConfig
    from minigrad.models.tasks import DEFAULT_TASK, IGNORE, TaskData, Vocab, expected_target_tokens, get_task
    from minigrad.models.trainer import Trainer
    from minigrad import distributed

    for k in GPT_ONLY_FLAGS:
        if getattr(args, k, None) is not None:
            raise TrainError(f"--{k.replace('_', '-')} applies to the GPT, not to --model seq2seq")
    beam = args.beam if args.beam is not None else 1
    if beam < 1:
        raise TrainError(f"--beam must be at least 1, got {beam}")
    task_name = args.task
    out_dir = run_dir(args)

    def same_task(ckpt):
        if task_name is not None and task_name != ckpt.meta.get("task"):
            raise CheckpointError(f"checkpoint {ckpt.path} was trained on task {ckpt.meta.get('task')!r}, "
                                  f"but --task {task_name} was given")

    fresh_task = task_name or DEFAULT_TASK
    ckpt, train_opts, given_model = start_or_resume(
        args, out_dir, "seq2seq", "not a seq2seq one (drop --model seq2seq, or choose another --out-dir)",
        MODEL_FLAGS, defaults={**TRAIN_DEFAULTS, **TASK_TRAIN_DEFAULTS.get(fresh_task, {})}, check_saved=same_task)
    if ckpt is not None:
        meta = ckpt.meta
        task_name = meta["task"]
        try:
            mcfg = Seq2SeqConfig.from_dict(meta["model_config"])
            vocab = Vocab.from_state(meta["vocab"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: model config or vocabulary is unusable ({e})") from None
    else:
        task_name = fresh_task
        vocab = Vocab()
        mcfg = None
    task = get_task(task_name)
    data = TaskData(task, vocab)
    if mcfg is None:
        try:
            mcfg = Seq2SeqConfig(vocab_size=len(vocab), max_len=data.max_len, **dict(MODEL_DEFAULTS, **given_model))
        except (TypeError, ValueError) as e:
            raise TrainError(str(e)) from None
    if mcfg.vocab_size != len(vocab) or mcfg.max_len < data.max_len:
        raise CheckpointError(f"checkpoint {ckpt.path if ckpt else out_dir}: model (vocab {mcfg.vocab_size}, "
                              f"max_len {mcfg.max_len}) does not fit task {task_name!r} (vocab {len(vocab)}, "
                              f"{data.max_len} positions)")
    cfg = TrainConfig(**train_opts)
    cfg.check()
    check_seq2seq_fits(mcfg, cfg, ckpt)
    model = Seq2Seq(mcfg, seed=cfg.seed)
    if args.device != "cpu":
        model.to(args.device)
    B = cfg.batch_size * distributed.size()      # the global batch: per-rank batch x ranks
    meta = {"model": "seq2seq", "task": task_name, "model_config": mcfg.to_dict(), "vocab": vocab.state()}

    def batches(split, rng):
        return data.batch(split, rng, B)

    def loss_fn(model, batch):
        return model(*batch)[1]

    def split(batch, n):        # the loss is a mean over target tokens: weigh slices by theirs
        return split_rows_by_targets(batch, n, IGNORE)

    trainer = Trainer(model, batches, loss_fn, cfg, out_dir, meta=meta, split=split,
                      tokens_per_batch=int(B * expected_target_tokens(task)), quiet=getattr(args, "quiet", False),
                      resume_hint=resume_command(out_dir, " --model seq2seq"))
    if ckpt is not None:
        trainer.load(ckpt)
    if not trainer.quiet:
        state = f"resuming at step {trainer.step}" if ckpt else "from scratch"
        print(f"seq2seq {model.num_params() / 1e6:.2f}M parameters, task {task_name}, vocab {len(vocab)}, "
              f"held-out {len(data.heldout)} examples, {state}", file=sys.stderr)
    if trainer.step < cfg.max_iters:
        result = trainer.run()
        if result["interrupted"]:
            return result
    else:
        result = {"step": trainer.step, "interrupted": False, **trainer.last_eval}
        if distributed.rank() == 0:
            print(f"checkpoint is at step {trainer.step} = --max-iters: evaluating only", file=sys.stderr)
    em, examples = exact_match(model, data, beam)
    if not trainer.quiet:
        for src, want, got in examples:
            print(f"  {src!r} -> {got!r} ({'ok' if got == want else 'want ' + repr(want)})", file=sys.stderr)
    result["exact_match"] = em
    return result


def run_dir(args) -> Path:
    """--out-dir, or out-seq2seq-TASK when it was not given."""
    from minigrad.models.tasks import DEFAULT_TASK

    return Path(args.out_dir if args.out_dir != DEFAULT_OUT else f"out-seq2seq-{args.task or DEFAULT_TASK}")


def check_seq2seq_fits(mcfg, cfg: TrainConfig, ckpt=None) -> None:
    """Before the model is allocated: a checkpoint's config must describe its weights, and the
    parameter state (a lower bound) must fit in the memory available."""
    from minigrad.models.checkpoint import check_param_count
    from minigrad.models.memory import check_fits, seq2seq_params, training_state_bytes

    n = seq2seq_params(mcfg)
    if ckpt is not None:
        check_param_count(ckpt, n)
    check_fits(training_state_bytes(n, cfg.workers), f"training this seq2seq model ({n:,} parameters)",
               "parameters, gradients and AdamW moments", "lower --n-layer or --n-embd")


def exact_match(model, data, beam: int = 1, batch: int = EVAL_BATCH):
    """Fraction of held-out examples decoded exactly, and a few (source, target, prediction)."""
    from minigrad.models.seq2seq import beam_search

    hits, shown = 0, []
    for i in range(0, len(data.heldout), batch):
        pairs = data.heldout[i:i + batch]
        src = data.encode_sources([s for s, _ in pairs])
        tokens, _ = beam_search(model, src, beam, data.task.max_tgt_len + 1)
        for (s, t), row in zip(pairs, tokens):
            got = data.vocab.decode(row)
            hits += got == t
            if len(shown) < SHOW_EXAMPLES:
                shown.append((s, t, got))
    return hits / len(data.heldout), shown
