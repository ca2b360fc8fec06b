"""The training loop: a model, a batch source and a loss in; optimiser steps, evaluations,
log records and checkpoints out.

`Trainer` takes
    model       a minigrad.nn.Module
    batches     batches(split, rng) -> batch (any object `loss_fn` understands)
    loss_fn     loss_fn(model, batch) -> scalar Tensor
    meta        JSON-able extras stored in every checkpoint (model config, vocabulary, ...)
and owns the optimiser, lr schedule, accumulation, clipping, eval, logging, checkpoints, and how a
run ends: SIGINT, SIGTERM and SIGHUP finish the step, save and return (exit 130, 143, 129); a
data-parallel worker's death saves the last whole step; a failed write (a full disk) stops the run
with one line, the last good checkpoint kept.
It knows nothing about GPT: `minigrad train` (models/train.py) and its seq2seq job
(models/seq2seq_train.py) both run it.

Reproducibility contract: training batches come only from `train_rng`, evaluation batches only
from a generator derived from (seed, step), so evaluating never shifts the training stream and a
resumed run logs exactly the losses of an uninterrupted one.

On several ranks (minigrad.distributed; `mpiexec -n N minigrad train`): `batches` returns the
global batch (N times the per-rank batch), drawn from the same `train_rng` on every rank, and
rank r trains on the r-th of `split(batch, N)`: disjoint shards, whose union is the batch one
process would draw with --batch-size N·B. One allreduce of all gradients per step makes every
rank's gradient the global batch's; evaluation batches are spread over the ranks; rank 0 alone
prints, logs and checkpoints. On a GPU the step waits for the device once (the loss read back),
and data-parallel workers are not used (one per rank).

Half precision (cfg.dtype, `minigrad train --dtype`): "bfloat16" and "float16" run every loss
(training and evaluation, in this process and in the data-parallel workers) under
minigrad.autocast(dtype); parameters, gradients and AdamW moments stay float32. "float16" also
scales the loss (minigrad.amp.GradScaler, dynamic): the gradients are unscaled after the
data-parallel sum and the ranks' allreduce, so every worker's and rank's inf reaches the one
gradient all ranks hold bit for bit, and every rank skips that step alike (the weights stay put,
the scale is halved, the step counts as taken: the lr schedule moves on). A skipped step is logged
with "skipped": true; each float16 log record carries its "loss_scale"; the scaler's state and the
skip count are checkpointed. "float32" (the default) runs exactly the code it always ran.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

import minigrad
from minigrad import distributed, optim
from minigrad.amp import GradScaler
from minigrad.backend import is_device_array, raise_deferred_checks
from minigrad.models.checkpoint import (
    CheckpointError,
    check_arrays,
    latest_name,
    load_optim,
    optim_state,
    save_checkpoint,
)
from minigrad.models.data_parallel import DataParallel, WorkerError
from minigrad.models.progress import LogFile, Progress, plot_log, read_log, rewrite_log
from minigrad.models.train_config import TrainConfig, TrainError, lr_at

EVAL_STREAM = 0xE7A1  # salt for the evaluation generators
DROPOUT_STREAM = 0xD50D  # salt for each rank's dropout stream (several ranks only)
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


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


def under_autocast(loss_fn, dtype: str):
    """loss_fn itself for "float32"; else loss_fn run under minigrad.autocast(dtype) (its forward
    only: the backward runs outside, as PyTorch's autocast asks)."""
    if dtype == "float32":
        return loss_fn

    def loss_under_autocast(model, batch):
        with minigrad.autocast(dtype):
            return loss_fn(model, batch)
    return loss_under_autocast


class Trainer:
    def __init__(self, model, batches, loss_fn, cfg: TrainConfig, out_dir, meta: dict | None = None,
                 tokens_per_batch: int | None = None, timer: StepTimer | None = None, quiet: bool = False,
                 on_step=None, split=None, resume_hint: str = "--resume", scaler: GradScaler | None = None):
        """split: split(batch, n) -> [(slice, weight), ...] with weights summing to 1, so that the
        batch loss is Σ weight·loss(slice); given it, each micro-batch is spread over cfg.workers
        workers (models/data_parallel.py). Without it, a micro-batch runs whole in this thread.
        resume_hint: how to continue this run, for the messages of an interrupted one.
        scaler: the float16 loss scaler (default GradScaler() with PyTorch's settings when
        cfg.dtype is "float16", else a disabled one)."""
        cfg.check()
        self.model, self.batches, self.cfg = model, batches, cfg
        self.loss_fn = under_autocast(loss_fn, cfg.dtype)
        self.scaler = scaler if scaler is not None else GradScaler(enabled=cfg.dtype == "float16")
        self.skipped_steps = 0             # float16 steps skipped for an inf/NaN gradient
        self._skipped = False              # whether the last train_step was skipped
        self.out_dir = Path(out_dir)
        self.meta = dict(meta or {})
        self.tokens_per_batch = tokens_per_batch
        self.timer = timer or StepTimer()
        self.quiet = quiet
        self.on_step = on_step
        self.opt = optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                               betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        # ---- distributed hook: the communicator, this rank's shard, one worker on a GPU
        self.comm = distributed.current()
        self.distributed = self.comm.backend != "single"
        self.on_device = any(is_device_array(p.data) for p in model.parameters())
        self.workers = 1 if self.on_device else cfg.workers   # a GPU runs the micro-batch whole
        if self.distributed and split is None:
            raise TrainError("distributed training needs the job's split function (how to cut a batch into shards)")
        self.quiet = quiet or self.comm.rank != 0
        self.grads = distributed.GradientBuffer(model.parameters()) if self.distributed else None
        self._agreed_stop = False
        # ----
        self.split = split if self.workers > 1 or self.distributed else None
        self.parallel = (DataParallel(model, self.loss_fn, self.workers) if split is not None and self.workers > 1
                         else None)
        # autocast's switch is one process-wide setting: worker threads would turn it off under each
        # other, so under autocast the thread backend runs the slices one after another (the same numbers)
        self._slices_concurrent = (False if cfg.dtype != "float32" and self.parallel is not None
                                   and self.parallel.backend == "thread" else None)
        self.step = 0
        self.train_rng = np.random.default_rng(cfg.seed)
        self._stop = False
        self.stop_signal = None            # the signal that stopped the run, if one did
        self.resume_hint = resume_hint
        self.last_eval: dict = {}
        self.best = None                   # {"step", "val_loss"} of the best checkpoint (keep_best)
        self._saved = (None, None)         # (step, path) of this run's last checkpoint

    # ---- state for checkpoints
    def save(self, evaluated: bool = False) -> Path | None:
        """Checkpoint the current step (rank 0 alone writes; other ranks return None). evaluated:
        self.last_eval was measured at this step, so with cfg.keep_best a lower val_loss than the
        best so far makes this the best checkpoint."""
        if self.comm.rank != 0:
            return None
        best, keep = self.best, getattr(self.cfg, "keep_best", True)
        val = self.last_eval.get("val_loss") if evaluated and keep else None
        is_best = val is not None and (best is None or val < best["val_loss"])
        if is_best:
            best = {"step": self.step, "val_loss": val}
        optim_arrays, optim_info = optim_state(self.opt)
        dropout_rng = getattr(self.model, "dropout_rng", None)
        meta = dict(self.meta, train_config=asdict(self.cfg), train_rng=self.train_rng.bit_generator.state,
                    dropout_rng=dropout_rng.bit_generator.state if dropout_rng is not None else None,
                    optim=optim_info, last_eval=self.last_eval, best=best if keep else None,
                    ranks=self.comm.size)
        if self.scaler.is_enabled():
            meta.update(grad_scaler=self.scaler.state_dict(), skipped_steps=self.skipped_steps)
        arrays = {"model": dict(self.model.state_dict()), "optim": optim_arrays}
        path = save_checkpoint(self.out_dir, self.step, arrays, meta, best=is_best if keep else None)
        self.best = best if keep else None
        self._saved = (self.step, path)
        return path

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
            if self.scaler.is_enabled():    # a float16 run's scale and growth count (none: a fresh scaler)
                self.scaler.load_state_dict(ckpt.meta.get("grad_scaler") or {})
                self.skipped_steps = int(ckpt.meta.get("skipped_steps", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: training state is incomplete ({e})") from None
        load_optim(self.opt, ckpt.arrays.get("optim", {}), optim_info, ckpt.path)
        self.last_eval = ckpt.meta.get("last_eval", {})
        self.best = ckpt.meta.get("best")

    # ---- pieces of a step
    def evaluate(self, iters: int, on_batch=None) -> dict:
        """Mean loss over `iters` batches of each split, drawn from a (seed, step) generator;
        on_batch() is called after each batch (a progress bar)."""
        self.model.eval()
        out = {}
        with minigrad.no_grad():
            for split in ("train", "val"):
                rng = np.random.default_rng([self.cfg.seed, EVAL_STREAM, self.step])
                if self.distributed:
                    losses = self._evaluate_on_ranks(split, rng, iters, on_batch)
                else:
                    losses = []
                    for _ in range(iters):
                        losses.append(float(self.loss_fn(self.model, self.batches(split, rng)).item()))
                        if on_batch is not None:
                            on_batch()
                out[f"{split}_loss"] = float(np.mean(losses))
        self.model.train()
        return out

    def train_step(self, lr: float) -> float:
        """One optimiser update over grad_accum micro-batches; returns the mean micro-batch loss
        (on several ranks: its mean over the ranks, i.e. the global batch's)."""
        cfg, t = self.cfg, self.timer
        set_lr(self.opt, lr)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None   # float16's loss scale
        with _quiet_overflow() if scale is not None else contextlib.nullcontext():
            total = self._accumulate(scale)
        loss = total / cfg.grad_accum
        with t.phase("optimizer"):
            if self.distributed:            # one allreduce: every rank now holds the global batch's gradient
                loss, stop = self.grads.reduce_(self.comm, loss, (self.stop_signal or signal.SIGINT) if self._stop else 0)
                if stop:                    # some rank was asked to stop: all stop after this step
                    self._agreed_stop = True
                    self.stop_signal = self.stop_signal or stop
            self._skipped = scale is not None and self._unscale(scale)
            if self._skipped:
                self.skipped_steps += 1
            elif self.distributed:
                if cfg.grad_clip > 0:
                    optim.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if self.parallel is not None:
                    self.parallel.optimizer_step(self.opt)
                else:
                    self.opt.step()
            elif self.parallel is not None:   # the gradient norm was measured in its reduction
                if cfg.grad_clip > 0:
                    self.parallel.clip_grad_norm_(cfg.grad_clip)
                self.parallel.optimizer_step(self.opt)
            else:
                if cfg.grad_clip > 0:
                    optim.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
            self.opt.zero_grad()
            if scale is not None:
                self.scaler.update()
        return float(loss)

    def _accumulate(self, scale) -> float:
        """The grad_accum micro-batches' gradients (times the loss scale, if any) into .grad; returns
        the sum of their losses."""
        cfg, t = self.cfg, self.timer
        total = 0.0
        for _ in range(cfg.grad_accum):
            with t.phase("data"):
                batch = self.batches("train", self.train_rng)
                weight = 1.0
                if self.distributed:    # this rank's shard; weight: ranks × its share (1 for equal shards)
                    batch, weight = self._shard(batch)
            if self.parallel is not None:
                c = weight / cfg.grad_accum
                with t.phase("forward+backward"):
                    total += weight * self.parallel.step(self.split(batch, self.workers),
                                                         c if scale is None else c * scale, self._slices_concurrent)
                continue
            with t.phase("forward"):
                loss = self.loss_fn(self.model, batch)
                c = weight / cfg.grad_accum
                if scale is not None:
                    c *= scale
                scaled = loss * c if c != 1.0 else loss
            with t.phase("backward"):
                scaled.backward()
            # on a GPU the losses add up on the device: the step reads the total back once, at its end
            total += weight * (loss.data.astype(np.float64) if self.on_device else float(loss.item()))
        return total

    def _unscale(self, scale: float) -> bool:
        """float16: divide the summed (and allreduced) gradients by the loss scale; True when one
        holds an inf or NaN, so the step is skipped. The gradients are the same on every rank bit
        for bit (the weights stay equal only because they are), so every rank decides alike."""
        self.scaler.unscale_(self.opt)
        if self.parallel is not None and self.parallel.grad_norm is not None:
            self.parallel.grad_norm /= scale   # the norm it measured, of the gradients now unscaled
        return self.scaler.found_inf()

    # ---- on several ranks
    def _shard(self, batch):
        """This rank's rows of the global batch, and ranks × their share of it (exactly 1 when the
        shards are equal, so the mean over ranks weighs them as one process would)."""
        part, share = self.split(batch, self.comm.size)[self.comm.rank]
        weight = share * self.comm.size
        return part, (1.0 if abs(weight - 1.0) < 1e-12 else weight)

    def _evaluate_on_ranks(self, split, rng, iters: int, on_batch=None):
        """The losses of `iters` batches drawn as one process draws them, batch i evaluated by rank
        i mod N; one allreduce of the vector (each entry is one rank's value plus zeros: exact)."""
        losses = np.zeros(iters, np.float64)
        for i in range(iters):
            batch = self.batches(split, rng)
            if i % self.comm.size == self.comm.rank:
                losses[i] = float(self.loss_fn(self.model, batch).item())
            if on_batch is not None:
                on_batch()
        self.comm.allreduce_sum_(losses)
        return losses

    def _start_ranks(self) -> None:
        """Every rank's setup succeeded (else all raise alike), then rank 0's parameters everywhere
        (a fresh start and a resume alike). Per-rank dropout streams are set each step."""
        if self.distributed:
            self.comm.agree()
            self.comm.training = True
            self.comm.broadcast_parameters(self.model)

    def _rank_dropout(self) -> None:
        """On several ranks each rank draws its own dropout masks, from a stream derived from
        (seed, rank, step), so a resumed run draws what the uninterrupted one drew."""
        rng = getattr(self.model, "dropout_rng", None)
        if self.distributed and rng is not None:
            rng.bit_generator.state = np.random.default_rng(
                [self.cfg.seed, DROPOUT_STREAM, self.comm.rank, self.step]).bit_generator.state

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step, save, return (what Ctrl-C does); signum is reported."""
        self._stop = True
        if self.stop_signal is None:
            self.stop_signal = signum

    # ---- how a run ends: signals, a dead worker, a failed write
    def _catch_stop_signals(self):
        """SIGINT, SIGTERM and SIGHUP (Ctrl-C; a scheduler, container or `kill`; a closed terminal
        or SSH session) end the run after the current step, saved. A second one of the same kind
        acts at once: SIGINT raises KeyboardInterrupt, the others take their default action. A
        signal the caller ignores (nohup, a background job) stays ignored. Returns the function
        that puts the previous handlers back."""
        if not _in_main_thread():
            return lambda: None
        previous = {}

        def on_signal(signum, frame):
            self.request_stop(signum)
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

        for sig in STOP_SIGNALS:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:
                previous[sig] = old
                signal.signal(sig, on_signal)

        def restore():
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        return restore

    def _step_saving_on_worker_death(self, lr: float) -> float:
        """train_step; if a data-parallel worker dies in it, the step is undone (its batch goes
        back to the stream), the last whole step is saved and a one-line TrainError says so."""
        rng_state = self.train_rng.bit_generator.state if self.parallel is not None else None
        try:
            return self.train_step(lr)
        except WorkerError as e:
            self.train_rng.bit_generator.state = rng_state
            self.opt.zero_grad()
            if self.comm.rank != 0:         # several ranks: rank 0 holds the checkpoints
                raise TrainError(f"{e}; rank 0's last checkpoint is kept; continue with {self.resume_hint}") from None
            path = self._io(self.save, what="checkpoint")
            raise TrainError(f"{e}; saved step {self.step} to {path}; continue with {self.resume_hint}") from None

    def _io(self, fn, *args, what: str, **kwargs):
        """fn(*args, **kwargs), with an OSError (a full disk, a failing device) turned into a
        one-line TrainError saying what could not be written and what was kept. The writers
        themselves remove their temporary files (models/checkpoint.py, models/progress.py)."""
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            raise TrainError(self._write_failure(e, what)) from None

    def _write_failure(self, e: OSError, what: str) -> str:
        reason = e.strerror or str(e) or type(e).__name__
        kept = latest_name(self.out_dir)
        after = (f"the last good checkpoint, {kept}, is kept; free space (or fix the disk) and continue with "
                 f"{self.resume_hint}") if kept else "no checkpoint was saved yet; free space and start again"
        return f"cannot write the {what} in {self.out_dir} (step {self.step}): {reason}; {after}"

    def _say(self, line: str) -> None:
        """A line on stderr, which may be gone (SIGHUP closed the terminal, a pipe was closed)."""
        try:
            print(line, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    # ---- the run
    def run(self) -> dict:
        cfg = self.cfg
        self._start_ranks()
        writer = self.comm.rank == 0     # rank 0 alone writes the log, the plot and the checkpoints
        log_path = self.out_dir / "log.jsonl" if writer else Path(os.devnull)
        records = []
        if writer:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            records = [r for r in read_log(log_path) if r.get("step", 0) <= self.step]
            # drop lines a crashed run logged past its last checkpoint
            self._io(rewrite_log, log_path, records, what="log.jsonl")
        sigpipe = getattr(signal, "SIGPIPE", 13)
        progress = Progress(cfg.max_iters, self.step, disable=self.quiet,
                            on_broken=lambda: self.request_stop(sigpipe))  # stderr closed: stop, saved
        restore_signals = self._catch_stop_signals()
        try:
            with self._io(LogFile, log_path, what="log.jsonl") as log:
                while self.step < cfg.max_iters and not (self._agreed_stop if self.distributed else self._stop):
                    lr = lr_at(self.step, cfg)
                    self._rank_dropout()
                    t0 = time.perf_counter()
                    step_scale = self.scaler.get_scale()
                    loss = self._step_saving_on_worker_death(lr)
                    dt = time.perf_counter() - t0
                    self.step += 1
                    final = self.step == cfg.max_iters
                    tok_s = (self.tokens_per_batch or 0) * cfg.grad_accum / max(dt, 1e-9)
                    progress.update(self.step, loss, lr, tok_s)
                    rec = None
                    if (self.step % cfg.log_interval == 0 or self.step % cfg.eval_interval == 0 or final
                            or self._skipped):
                        rec = {"step": self.step, "loss": loss, "lr": lr}
                        if self.scaler.is_enabled():   # float16: the scale this step's loss was multiplied by
                            rec["loss_scale"] = step_scale
                            if self._skipped:
                                rec["skipped"] = True
                    if not math.isfinite(loss):   # on several ranks: the same loss on every rank
                        try:   # on cuda a bad token or target id is filed on the device, named here
                            raise_deferred_checks()
                        except IndexError as e:
                            raise TrainError(f"{e} (step {self.step})") from None
                        raise distributed.agreed(
                            TrainError(f"loss became {loss} at step {self.step}; lower --lr or check the data"))
                    evaluated = self.step % cfg.eval_interval == 0 or final
                    if evaluated:
                        iters = cfg.final_eval_iters if final else cfg.eval_iters
                        bar = progress.task(2 * iters, "final evaluation") if final else contextlib.nullcontext()
                        with self.timer.phase("eval"), bar as tick:
                            self.last_eval = self.evaluate(iters, tick)
                        rec.update(self.last_eval)
                        progress.write(f"step {self.step}: train loss {self.last_eval['train_loss']:.4f}, "
                                       f"val loss {self.last_eval['val_loss']:.4f}")
                    if rec is not None:
                        self._io(log.append, rec, what="log.jsonl")
                        records.append(rec)
                    if evaluated:
                        self._io(self.save, evaluated=True, what="checkpoint")
                    if self.on_step is not None:
                        self.on_step(self)
        finally:
            progress.close()
            if self.parallel is not None:
                self.parallel.stop_workers()   # worker processes end with the run (restarted on demand)
            restore_signals()
        interrupted = self.step < cfg.max_iters
        if interrupted and writer:   # saved already if the stop came at an evaluation step
            path = self._saved[1] if self._saved[0] == self.step else self._io(self.save, what="checkpoint")
            sig = self.stop_signal or signal.SIGINT
            by = "" if sig == signal.SIGINT else f" by {signal.Signals(sig).name}"
            self._say(f"interrupted{by}: saved step {self.step} to {path}; continue with {self.resume_hint}")
        note = plot_log(records, self.out_dir / "loss.png") if records and writer else None
        if note and not self.quiet:
            self._say(note)
        summary = {"step": self.step, "interrupted": interrupted,
                   "signal": (self.stop_signal or signal.SIGINT) if interrupted else None, **self.last_eval}
        if self.scaler.is_enabled():
            summary.update(skipped_steps=self.skipped_steps, loss_scale=self.scaler.get_scale())
            if not self.quiet:
                self._say(f"float16: {self.skipped_steps} of {self.step} steps skipped for an inf/NaN gradient; "
                          f"loss scale now {self.scaler.get_scale():g}")
        return summary


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


@contextlib.contextmanager
def _quiet_overflow():
    """float16: a scaled gradient that overflows is expected (the step is skipped), not worth NumPy's
    RuntimeWarning. A warnings filter, not np.errstate: the data-parallel threads sum gradients too."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(overflow|invalid value) encountered", RuntimeWarning)
        yield


def _in_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


