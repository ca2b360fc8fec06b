"""`minigrad eval --ckpt DIR [--weights float32|bfloat16|int8]`: a checkpoint's loss on its data.

The same evaluation the trainer runs (models/trainer.py, `Trainer.evaluate`): the checkpoint's
data, its global batch and block size, `eval_iters` batches per split drawn from the generator
(seed, EVAL_STREAM, step) -- or `final_eval_iters` for the checkpoint of the run's last step, as
the trainer's final evaluation. With float32 weights the printed val_loss is the one the trainer
logged for that step. Last line: `val_loss=<float>`.
"""
from __future__ import annotations

import sys


def evaluate_checkpoint(path, weights: str = "float32", which: str = "latest") -> dict:
    """{"train_loss", "val_loss", "step", "iters"} of the checkpoint at `path`."""
    import tempfile

    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data import load_data
    from minigrad.models.generate import load_model
    from minigrad.models.train_config import TrainConfig
    from minigrad.models.trainer import Trainer
    from minigrad.models.weights import apply_weights

    model, _, ckpt = load_model(path, "cpu", which)
    meta = ckpt.meta
    try:
        cfg = TrainConfig(**meta["train_config"])
        data_opts = meta["data"]
        step = int(meta["step"])
        ranks = int(meta.get("ranks") or 1)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {ckpt.path}: no training run's data or settings to evaluate on ({e})") \
            from None
    data = load_data(data_opts.get("data"), data_opts.get("tokenizer", "char"), data_opts.get("vocab_size"))
    if data.tokenizer.state() != meta.get("tokenizer"):
        raise CheckpointError(f"checkpoint {ckpt.path} was trained on another vocabulary than {data.source} gives")
    apply_weights(model, weights)
    B, T = cfg.batch_size * ranks, model.config.block_size   # the trainer's global batch

    def batches(split, rng):
        return data.get_batch(split, B, T, rng)

    def loss_fn(model, batch):
        return model(batch[0], batch[1])[1]

    trainer = Trainer(model, batches, loss_fn, cfg, tempfile.gettempdir(), quiet=True)
    trainer.step = step
    iters = cfg.final_eval_iters if step == cfg.max_iters else cfg.eval_iters
    out = trainer.evaluate(iters)
    return dict(out, step=step, iters=iters)


def main(args) -> int:
    from minigrad.models.cli_common import fail

    try:
        r = evaluate_checkpoint(args.ckpt, args.weights, "best" if args.best else "latest")
    except user_errors() as e:
        return fail("eval", str(e))
    print(f"step {r['step']}, {args.weights} weights, {r['iters']} batches per split: train_loss={r['train_loss']:.6f}",
          file=sys.stderr)
    print(f"val_loss={r['val_loss']:.6f}")
    return 0


def user_errors() -> tuple:
    from minigrad.models.checkpoint import CheckpointError
    from minigrad.models.data import DataError
    from minigrad.models.memory import ModelTooLargeError
    from minigrad.models.tokenize import TokenizerError
    from minigrad.models.train_config import TrainError
    from minigrad.models.weights import WeightsError

    return (CheckpointError, DataError, TokenizerError, ModelTooLargeError, TrainError, WeightsError, OSError)
