"""The trainers as `minigrad train` assembles them, not through their parts.

After one optimiser step with zero gradients, AdamW's moment estimates are zero and the only change
a parameter can see is decoupled weight decay w <- w (1 - lr wd). So every parameter that must not
decay (LayerNorm gains and biases, every bias) must come out bit for bit unchanged, and every other
one (matrices, embeddings) scaled by exactly 1 - lr wd up to its float32 rounding. The step is the
Trainer's real one (its optimizer, its parameter groups, clipping, the lr schedule): the test only
makes the loss zero (loss * 0 through the real model) and sets the parameters to nonzero values
first, so that a decayed zero bias cannot pass by staying zero.
"""
import numpy as np
import pytest
from minigrad.models.trainer import Trainer

from minigrad import nn

pytest.importorskip("safetensors", reason="the trainers checkpoint with the optional 'safetensors' package")

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4", "--lr", "3e-3",
        "--warmup-iters", "0", "--workers", "1", "--max-iters", "3", "--quiet"]
CORPUS = "".join(f"{w}: To be, or not to be, that is the question.\n" for w in ["HAMLET", "OPHELIA"] * 40)


def one_zero_gradient_step(monkeypatch, argv):
    """Run `minigrad train argv`, making its first step one with zero gradients; stop after it.
    Returns (model, parameters before, after, lr of the step, weight decay)."""
    from minigrad.models import cli

    seen = {}
    real_step = Trainer.train_step

    def zero_gradient_step(self, lr):
        rng = np.random.default_rng(0)
        for p in self.model.parameters():                       # nonzero, of either sign
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1.0, 1.0], p.shape)
        before = {n: p.numpy().copy() for n, p in self.model.named_parameters()}
        real_loss = self.loss_fn
        self.loss_fn = lambda model, batch: real_loss(model, batch) * 0.0
        try:
            loss = real_step(self, lr)
        finally:
            self.loss_fn = real_loss
        seen.update(model=self.model, before=before, lr=lr, wd=self.cfg.weight_decay,
                    after={n: p.numpy().copy() for n, p in self.model.named_parameters()})
        self.request_stop()
        return loss

    monkeypatch.setattr(Trainer, "train_step", zero_gradient_step)
    code = cli.main(["train", *map(str, argv)])
    assert code == 130 and seen, f"the run did not stop after one step (exit code {code})"
    return seen["model"], seen["before"], seen["after"], seen["lr"], seen["wd"]


def must_not_decay(model):
    """Names of the parameters that must not decay, decided here, not by the trainer's grouping:
    all of every LayerNorm, and every bias."""
    names = {n for n, _ in model.named_parameters() if n.split(".")[-1] == "bias"}
    for prefix, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            names |= {n for n, _ in m.named_parameters(prefix)}
    return names


def check_decay(model, before, after, lr, wd):
    keep = must_not_decay(model)
    assert any(".ln" in n and n.endswith("weight") for n in keep), "no LayerNorm gain found: the model changed?"
    assert wd > 0 and lr > 0
    changed = [n for n in keep if not np.array_equal(before[n], after[n])]
    assert not changed, f"parameters that must not decay changed in a zero-gradient step: {sorted(changed)}"
    eps = float(np.finfo(np.float32).eps)
    for n in set(before) - keep:
        want = before[n] * (1.0 - lr * wd)
        assert not np.array_equal(after[n], before[n]), f"{n} did not decay"
        # one float32 product by the rounded factor: within eps |w| of the exact value
        np.testing.assert_allclose(after[n], want, rtol=eps, atol=0, err_msg=f"{n}: not w (1 - lr wd)")


def test_gpt_trainer_decays_matrices_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    model, before, after, lr, wd = one_zero_gradient_step(
        monkeypatch, ["--data", corpus, "--out-dir", tmp_path / "run", "--block-size", "8", "--bias", *TINY])
    check_decay(model, before, after, lr, wd)


def test_seq2seq_trainer_decays_matrices_only(tmp_path, monkeypatch):
    model, before, after, lr, wd = one_zero_gradient_step(
        monkeypatch, ["--model", "seq2seq", "--task", "reverse", "--out-dir", tmp_path / "run", *TINY])
    check_decay(model, before, after, lr, wd)
