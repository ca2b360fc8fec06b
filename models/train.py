"""A generic training loop (model + batch source + loss), and the GPT `minigrad train` job on top.

The loop knows nothing about GPT: `Trainer` takes
    model       a minigrad.nn.Module
    batches     batches(split, rng) -> batch (any object `loss_fn` understands)
    loss_fn     loss_fn(model, batch) -> scalar Tensor
    meta        JSON-able extras stored in every checkpoint (model config, vocabulary, ...)
and owns the optimiser, lr schedule, accumulation, clipping, eval, logging, checkpoints, Ctrl-C.

Reproducibility contract: training batches come only from `train_rng`, evaluation batches only
from a generator derived from (seed, step), so evaluating never shifts the training stream and a
resumed run logs exactly the losses of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from minigrad.models.checkpoint import CheckpointError, check_arrays, has_checkpoint, load_checkpoint, save_checkpoint
from minigrad.models.data import DataError
from minigrad.models.data_parallel import DataParallel, split_rows
from minigrad.models.tokenize import TokenizerError

EVAL_STREAM = 0xE7A1  # salt for the evaluation generators


class TrainError(RuntimeError):
    """A user-fixable problem with the training request; the message is one line."""


USER_ERRORS = (TrainError, CheckpointError, DataError, TokenizerError)


@dataclass
class TrainConfig:
    max_iters: int = 2000
    batch_size: int = 12
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables
    eval_interval: int = 250
    eval_iters: int = 20
    final_eval_iters: int = 200
    log_interval: int = 1
    seed: int = 1337
    workers: int = 2  # data-parallel workers, each computing a slice of every micro-batch (models/data_parallel.py)

    def check(self) -> None:
        positive = ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters",
                    "final_eval_iters", "log_interval", "workers")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "warmup_iters"):
            if not getattr(self, name) >= 0:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise TrainError(f"--min-lr {self.min_lr} is above --lr {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrainError("AdamW betas must lie in [0, 1)")


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate for update number it+1: linear warmup, cosine decay to min_lr, then flat."""
    from minigrad.optim import warmup_cosine_lr

    return warmup_cosine_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters or cfg.max_iters)


# --------------------------------------------------------------------------- what a person sees

class Progress:
    """tqdm bar with loss, lr and tok/s; plain lines every `every` steps when tqdm is missing."""

    def __init__(self, total: int, initial: int, every: int = 50, stream=sys.stderr, disable=False):
        self.stream, self.every, self.disable = stream, every, disable
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = None
        if tqdm is not None and not disable:
            self.bar = tqdm(total=total, initial=initial, file=stream, dynamic_ncols=True, unit="step",
                            smoothing=0.1)

    def update(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4f} lr={lr:.2e} tok/s={tok_s:,.0f}", refresh=False)
            self.bar.update(1)
        elif not self.disable and step % self.every == 0:
            print(f"step {step}: loss {loss:.4f}, lr {lr:.2e}, {tok_s:,.0f} tok/s", file=self.stream, flush=True)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif not self.disable:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_log(path) -> list[dict]:
    """The records of a log.jsonl (a torn last line from a crash is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def plot_log(records: list[dict], path) -> str | None:
    """Loss curve PNG at `path`; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no loss curve (pip install matplotlib)"
    steps = [r["step"] for r in records if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in records if "loss" in r], lw=0.8, alpha=0.6, label="train (step)")
    ev = [r for r in records if "val_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["train_loss"] for r in ev], "o-", label="train (eval)")
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return None


# --------------------------------------------------------------------------- model and optimiser state

def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def optim_state(opt) -> tuple[dict, dict]:
    """Optimizer state split for a checkpoint: ({"<param index>.<buffer>": array}, JSON-able rest)."""
    sd = opt.state_dict()
    arrays, scalars = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if hasattr(v, "shape"):
                arrays[f"{i}.{k}"] = np.asarray(v)
            else:
                scalars.setdefault(str(i), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["groups"]]
    return arrays, {"groups": groups, "scalars": scalars}


def load_optim(opt, arrays: dict, info: dict, where) -> None:
    """Inverse of optim_state; a state that does not fit this optimizer is a CheckpointError."""
    state: dict = {}
    try:
        for key, v in arrays.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        for i, st in info["scalars"].items():
            state.setdefault(int(i), {}).update(st)
        opt.load_state_dict({"groups": info["groups"], "state": state})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {where}: optimizer state does not fit this model ({e})") from None



def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on parameters of >= 2 dims (matmul weights, embeddings) only."""
    named = list(model.named_parameters())
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class StepTimer:
    """Phase hook: `with timer.phase(name):` around data / forward / backward / optimizer.

    The default does nothing; a profiler (e.g. `minigrad train --profile`) can subclass it.
    """

    totals: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str):
        yield


# --------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, model, batches, loss_fn, cfg: TrainConfig, out_dir, meta: dict | None = None,
                 tokens_per_batch: int | None = None, timer: StepTimer | None = None, quiet: bool = False,
                 on_step=None, split=None):
        """split: split(batch, n) -> [(slice, weight), ...] with weights summing to 1, so that the
        batch loss is Σ weight·loss(slice); given it, each micro-batch is spread over cfg.workers
        workers (models/data_parallel.py). Without it, a micro-batch runs whole in this thread."""
        import minigrad.optim as optim

        cfg.check()
        self.model, self.batches, self.loss_fn, self.cfg = model, batches, loss_fn, cfg
        self.out_dir = Path(out_dir)
        self.meta = dict(meta or {})
        self.tokens_per_batch = tokens_per_batch
        self.timer = timer or StepTimer()
        self.quiet = quiet
        self.on_step = on_step
        self.opt = optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                               betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.split = split if cfg.workers > 1 else None
        self.parallel = DataParallel(model, loss_fn, cfg.workers) if self.split is not None else None
        self.step = 0
        self.train_rng = np.random.default_rng(cfg.seed)
        self._stop = False
        self.last_eval: dict = {}

    # ---- state for checkpoints
    def save(self) -> Path:
        optim_arrays, optim_info = optim_state(self.opt)
        dropout_rng = getattr(self.model, "dropout_rng", None)
        meta = dict(self.meta, train_config=asdict(self.cfg), train_rng=self.train_rng.bit_generator.state,
                    dropout_rng=dropout_rng.bit_generator.state if dropout_rng is not None else None,
                    optim=optim_info, last_eval=self.last_eval)
        arrays = {"model": dict(self.model.state_dict()), "optim": optim_arrays}
        return save_checkpoint(self.out_dir, self.step, arrays, meta)

    def load(self, ckpt) -> None:
        """Restore weights, moments, step and RNG streams from a loaded Checkpoint (validated)."""
        expected = {name: arr.shape for name, arr in self.model.state_dict().items()}
        check_arrays(expected, ckpt.arrays["model"], "model weights", ckpt.path)
        try:
            self.model.load_state_dict(ckpt.arrays["model"])
            self.train_rng.bit_generator.state = ckpt.meta["train_rng"]
            dropout_rng = getattr(self.model, "dropout_rng", None)
            if dropout_rng is not None and ckpt.meta.get("dropout_rng") is not None:
                dropout_rng.bit_generator.state = ckpt.meta["dropout_rng"]
            self.step = int(ckpt.meta["step"])
            optim_info = ckpt.meta["optim"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: training state is incomplete ({e})") from None
        load_optim(self.opt, ckpt.arrays.get("optim", {}), optim_info, ckpt.path)
        self.last_eval = ckpt.meta.get("last_eval", {})

    # ---- pieces of a step
    def evaluate(self, iters: int) -> dict:
        """Mean loss over `iters` batches of each split, drawn from a (seed, step) generator."""
        from minigrad import no_grad

        self.model.eval()
        out = {}
        with no_grad():
            for split in ("train", "val"):
                rng = np.random.default_rng([self.cfg.seed, EVAL_STREAM, self.step])
                losses = [float(self.loss_fn(self.model, self.batches(split, rng)).item()) for _ in range(iters)]
                out[f"{split}_loss"] = float(np.mean(losses))
        self.model.train()
        return out

    def train_step(self, lr: float) -> float:
        """One optimiser update over grad_accum micro-batches; returns the mean micro-batch loss."""
        cfg, t = self.cfg, self.timer
        set_lr(self.opt, lr)
        total = 0.0
        for _ in range(cfg.grad_accum):
            with t.phase("data"):
                batch = self.batches("train", self.train_rng)
            if self.parallel is not None:
                with t.phase("forward+backward"):
                    total += self.parallel.step(self.split(batch, cfg.workers), 1.0 / cfg.grad_accum)
                continue
            with t.phase("forward"):
                loss = self.loss_fn(self.model, batch)
                scaled = loss * (1.0 / cfg.grad_accum) if cfg.grad_accum > 1 else loss
            with t.phase("backward"):
                scaled.backward()
            total += float(loss.item())
        with t.phase("optimizer"):
            if self.parallel is not None:   # the gradient norm was measured in its reduction
                if cfg.grad_clip > 0:
                    self.parallel.clip_grad_norm_(cfg.grad_clip)
                self.parallel.optimizer_step(self.opt)
            else:
                if cfg.grad_clip > 0:
                    from minigrad.optim import clip_grad_norm_
                    clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
            self.opt.zero_grad()
        return total / cfg.grad_accum

    def request_stop(self) -> None:
        """Stop after the current step, save, return (what Ctrl-C does)."""
        self._stop = True

    # ---- the run
    def run(self) -> dict:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / "log.jsonl"
        records = [r for r in read_log(log_path) if r.get("step", 0) <= self.step]
        _rewrite_log(log_path, records)  # drop lines a crashed run logged past its last checkpoint
        progress = Progress(cfg.max_iters, self.step, disable=self.quiet)
        previous = signal.getsignal(signal.SIGINT)
        main_thread = _in_main_thread()

        def on_sigint(signum, frame):
            self._stop = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

        if main_thread:
            signal.signal(signal.SIGINT, on_sigint)
        try:
            with open(log_path, "a") as log:
                while self.step < cfg.max_iters and not self._stop:
                    lr = lr_at(self.step, cfg)
                    t0 = time.perf_counter()
                    loss = self.train_step(lr)
                    dt = time.perf_counter() - t0
                    self.step += 1
                    final = self.step == cfg.max_iters
                    tok_s = (self.tokens_per_batch or 0) * cfg.grad_accum / max(dt, 1e-9)
                    progress.update(self.step, loss, lr, tok_s)
                    rec = None
                    if self.step % cfg.log_interval == 0 or self.step % cfg.eval_interval == 0 or final:
                        rec = {"step": self.step, "loss": loss, "lr": lr}
                    if not math.isfinite(loss):
                        raise TrainError(f"loss became {loss} at step {self.step}; lower --lr or check the data")
                    if self.step % cfg.eval_interval == 0 or final:
                        with self.timer.phase("eval"):
                            self.last_eval = self.evaluate(cfg.final_eval_iters if final else cfg.eval_iters)
                        rec.update(self.last_eval)
                        progress.write(f"step {self.step}: train loss {self.last_eval['train_loss']:.4f}, "
                                       f"val loss {self.last_eval['val_loss']:.4f}")
                    if rec is not None:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                        records.append(rec)
                    if self.step % cfg.eval_interval == 0 or final:
                        self.save()
                    if self.on_step is not None:
                        self.on_step(self)
        finally:
            progress.close()
            if self.parallel is not None:
                self.parallel.stop_workers()   # worker processes end with the run (restarted on demand)
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        interrupted = self.step < cfg.max_iters
        if interrupted:
            path = self.save()
            print(f"interrupted: saved step {self.step} to {path}; continue with --resume", file=sys.stderr)
        note = plot_log(records, self.out_dir / "loss.png") if records else None
        if note and not self.quiet:
            print(note, file=sys.stderr)
        return {"step": self.step, "interrupted": interrupted, **self.last_eval}


def tune_malloc() -> bool:
    """Keep freed step temporaries in glibc's heap instead of returning them to the kernel.

    A training step allocates and frees the same ~MB-sized arrays every time; by default glibc
    serves them with fresh mmaps, so each step pays ~9,000 page faults (measured at the default
    GPT config). Raising the mmap and trim thresholds makes the heap reuse them. A no-op where
    glibc's mallopt is not available. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    ok = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(M_TOP_PAD, 128 << 20) == 1
    return bool(ok)


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _rewrite_log(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the GPT job (`minigrad train`)

DEFAULT_DATA = {"data": None, "tokenizer": "char", "vocab_size": None}
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias")


def checkpoint_to_resume(out_dir: Path, force: bool, model: str, not_this: str):
    """The checkpoint that --resume continues: refuses --force alongside it, and a checkpoint of
    another model kind (``not_this`` ends the message, e.g. "not a GPT")."""
    if force:
        raise TrainError("--resume and --force contradict each other")
    ckpt = load_checkpoint(out_dir)
    if ckpt.meta.get("model") != model:
        raise TrainError(f"checkpoint {ckpt.path} holds a {ckpt.meta.get('model')!r} model, {not_this}")
    return ckpt


def _given(args, names) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def main(args) -> dict:
    """Run `minigrad train` from parsed arguments; returns Trainer.run()'s summary."""
    from minigrad.models.data import load_data
    from minigrad.models.gpt import GPT, GPTConfig

    out_dir = Path(args.out_dir)
    train_flags = [f.name for f in TrainConfig.__dataclass_fields__.values()]
    given_train = _given(args, train_flags)
    given_model = _given(args, MODEL_FLAGS)
    given_data = _given(args, DEFAULT_DATA)
    ckpt = None
    if args.resume:
        ckpt = checkpoint_to_resume(out_dir, args.force, "gpt", "not a GPT")
        meta = ckpt.meta
        saved_model = meta["model_config"]
        for k, v in given_model.items():
            if saved_model.get(k) != v:
                raise CheckpointError(f"checkpoint {ckpt.path} has {k}={saved_model.get(k)}, but "
                                      f"--{k.replace('_', '-')} {v} was given")
        data_opts = dict(meta.get("data", DEFAULT_DATA), **given_data)
        train_opts = dict(meta["train_config"], **given_train)
        model_opts = {k: v for k, v in saved_model.items() if k != "vocab_size"}
    else:
        if has_checkpoint(out_dir) and not args.force:
            raise TrainError(f"{out_dir} already holds a checkpoint; pass --resume to continue it "
                             "or --force to start afresh (or choose another --out-dir)")
        data_opts = dict(DEFAULT_DATA, **given_data)
        train_opts = given_train
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
    model = GPT(mcfg, seed=cfg.seed)
    if args.device != "cpu":
        model.to(args.device)
    B, T = cfg.batch_size, mcfg.block_size
    meta = {"model": "gpt", "model_config": mcfg.to_dict(), "tokenizer": data.tokenizer.state(),
            "data": data_opts}

    def batches(split, rng):
        return data.get_batch(split, B, T, rng)

    def loss_fn(model, batch):
        return model(batch[0], batch[1])[1]

    timer = None
    if getattr(args, "profile", False):  # phase breakdown, tokens/s, FLOP/s (minigrad/profiler.py)
        from minigrad.profiler import PhaseTimer
        timer = PhaseTimer.for_device(args.device)
    trainer = Trainer(model, batches, loss_fn, cfg, out_dir, meta=meta, tokens_per_batch=B * T,
                      quiet=getattr(args, "quiet", False), timer=timer, split=split_rows)
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
