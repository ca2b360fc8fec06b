"""models/data_parallel.py: a micro-batch split over workers gives the gradients of the whole batch.

A run on worker processes or threads must equal the same slices run one after another bit for
bit (the result may not depend on timing), and all must match the unsplit batch's gradient to
float32 roundoff. The optimizer's pooled update equals its serial update bit for bit.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import minigrad
from minigrad.optim import AdamW
from minigrad.models.data_parallel import DataParallel, balanced, pooled_step, split_rows
from minigrad.models.gpt import GPT, GPTConfig

from conftest import tol

pytest.importorskip("threadpoolctl", reason="workers need threadpoolctl to pin BLAS to one thread each")
BACKENDS = ["thread"] + (["process"] if sys.platform.startswith("linux") else [])

CFG = GPTConfig(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=32)


def loss_fn(model, batch):
    return model(batch[0], batch[1])[1]


def batch(rows=6, seed=0):
    tok = np.random.default_rng(seed).integers(0, CFG.vocab_size, (rows, CFG.block_size + 1))
    return tok[:, :-1], tok[:, 1:]


def grads_of(model):
    return [p.grad.numpy().copy() for p in model.parameters()]


def assert_workers_equal_serial(dp, model, parts):
    """One step on the workers gives the serial step's gradients bit for bit (.grad left zeroed)."""
    dp.step(parts)
    on_workers = grads_of(model)
    model.zero_grad()
    dp.step(parts, concurrent=False)
    for a, s in zip(on_workers, grads_of(model)):
        np.testing.assert_array_equal(a, s)
    model.zero_grad()


def test_split_rows_weights_sum_to_one():
    b = (np.arange(10).reshape(5, 2), np.arange(5))
    parts = split_rows(b, 2)
    assert [len(p[0][0]) for p in parts] == [2, 3] or [len(p[0][0]) for p in parts] == [3, 2]
    assert sum(w for _, w in parts) == pytest.approx(1.0)
    np.testing.assert_array_equal(np.concatenate([p[0][1] for p in parts]), b[1])
    assert len(split_rows((np.zeros((1, 3)),), 4)) == 1          # never an empty slice


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows", [6, 7])
def test_workers_equal_serial_slices_and_the_whole_batch(backend, rows):
    model = GPT(CFG, seed=1)
    dp = DataParallel(model, loss_fn, workers=2, backend=backend)
    assert dp.can_run_concurrently()
    b = batch(rows)
    loss_t = dp.step(split_rows(b, 2), concurrent=True)
    g_threads = grads_of(model)
    model.zero_grad()
    loss_s = dp.step(split_rows(b, 2), concurrent=False)
    g_serial = grads_of(model)
    model.zero_grad()
    assert loss_t == loss_s
    for a, s in zip(g_threads, g_serial):
        np.testing.assert_array_equal(a, s)
    whole = loss_fn(model, b)
    whole.backward()
    rtol, atol = tol(np.float32, ulps=64 * CFG.block_size)
    assert loss_t == pytest.approx(float(whole.item()), rel=rtol)
    for a, w in zip(g_threads, grads_of(model)):
        np.testing.assert_allclose(a, w, rtol=rtol, atol=atol * max(1.0, float(np.abs(w).max())))
    dp.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulates_into_existing_grads_with_scale(backend):
    model = GPT(CFG, seed=2)
    dp = DataParallel(model, loss_fn, workers=2, backend=backend)
    b1, b2 = batch(4, 1), batch(4, 2)
    dp.step(split_rows(b1, 2), 0.5)
    dp.step(split_rows(b2, 2), 0.5)
    acc = grads_of(model)
    model.zero_grad()
    dp.step(split_rows(b1, 2), 0.5, concurrent=False)
    dp.step(split_rows(b2, 2), 0.5, concurrent=False)
    for a, s in zip(acc, grads_of(model)):
        np.testing.assert_array_equal(a, s)
    dp.close()


def test_dropout_and_profiler_run_serially():
    model = GPT(GPTConfig(**{**CFG.to_dict(), "dropout": 0.1}), seed=3)
    dp = DataParallel(model, loss_fn, workers=2)
    assert not dp.can_run_concurrently()          # one random stream: workers would reorder or copy it
    model.eval()
    assert dp.can_run_concurrently()
    with minigrad.profile():
        assert not dp.can_run_concurrently()      # the profiler is process-wide
    dp.close()
    assert not DataParallel(GPT(CFG), loss_fn, workers=1).can_run_concurrently()


def test_pooled_optimizer_step_equals_serial():
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(4)
    shapes = [(5, 3), (7,), (2, 2, 2), (11, 4), (1,)]
    def run(pool):
        ps = [minigrad.nn.Parameter(rng_w.copy()) for rng_w in ws]
        for p, g in zip(ps, gs):
            p.grad = minigrad.Tensor(g)
        opt = AdamW(ps, lr=0.1, weight_decay=0.1)
        for _ in range(3):
            if pool is None:
                opt.step()
            else:
                pooled_step(opt, pool, 2)
        return [p.numpy() for p in ps]
    ws = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    with ThreadPoolExecutor(2) as pool:
        pooled = run(pool)
    for a, b in zip(pooled, run(None)):
        np.testing.assert_array_equal(a, b)


def test_balanced_keeps_every_item_once():
    groups = balanced(list("abcdef"), [10, 1, 1, 1, 9, 2], 2)
    assert sorted(x for g in groups for x in g) == list("abcdef")
    loads = [sum(dict(zip("abcdef", [10, 1, 1, 1, 9, 2]))[x] for x in g) for g in groups]
    assert max(loads) - min(loads) <= 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process backend forks (Linux only)")
def test_process_workers_follow_weight_updates_and_reloads():
    """The child sees each in-place optimizer update (shared memory) and a load_state_dict, which
    replaces the parameters' arrays (the weights are shared again and the child re-forked)."""
    model = GPT(CFG, seed=5)
    dp = DataParallel(model, loss_fn, workers=2, backend="process")
    b = batch(6, 3)
    opt = AdamW(model.parameters(), lr=0.05)
    for _ in range(2):
        dp.step(split_rows(b, 2))
        opt.step()
        opt.zero_grad()
    assert_workers_equal_serial(dp, model, split_rows(b, 2))   # after in-place updates
    model.load_state_dict(GPT(CFG, seed=6).state_dict())
    assert_workers_equal_serial(dp, model, split_rows(b, 2))   # after the arrays were replaced
    procs = [c[0] for c in dp._children]
    dp.close()
    assert procs and not any(p.is_alive() for p in procs)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process backend forks (Linux only)")
def test_process_worker_error_is_reported_and_the_next_step_recovers():
    from minigrad.models.data_parallel import WorkerError

    def picky(model, b):
        if len(b[0]) == 2 and b[0][0, 0] < 0:                 # only the second slice of a bad batch fails
            raise ValueError("bad tokens in slice")
        return loss_fn(model, (np.abs(b[0]), b[1]))
    model = GPT(CFG, seed=7)
    dp = DataParallel(model, picky, workers=2, backend="process")
    x, y = batch(4, 4)
    bad = (np.concatenate([x[:2], -1 - x[2:]]), y)
    with pytest.raises(WorkerError, match="ValueError: bad tokens in slice"):
        dp.step(split_rows(bad, 2))
    model.zero_grad()
    dp.step(split_rows((x, y), 2))                           # a fresh worker, correct results
    g = grads_of(model)
    model.zero_grad()
    dp.step(split_rows((x, y), 2), concurrent=False)
    for a, s in zip(g, grads_of(model)):
        np.testing.assert_array_equal(a, s)
    dp.close()


def test_step_measures_the_gradient_norm_for_clipping():
    """The norm measured in the reduction is optim's global norm, and clipping with it scales the
    gradients exactly as optim.clip_grad_norm_ does."""
    from minigrad.optim import clip_grad_norm_
    model = GPT(CFG, seed=8)
    dp = DataParallel(model, loss_fn, workers=2, backend="thread")
    with pytest.raises(RuntimeError, match="no step has run yet"):
        dp.clip_grad_norm_(1.0)
    dp.step(split_rows(batch(4, 5), 2), 0.5)
    dp.step(split_rows(batch(4, 6), 2), 0.5)            # accumulated: the norm is of the sum
    measured = dp.grad_norm
    before = grads_of(model)
    assert measured == pytest.approx(clip_grad_norm_(model.parameters(), 1e9), rel=1e-12)
    max_norm = measured / 3                              # a clip that bites
    clip_grad_norm_(model.parameters(), max_norm)
    want = grads_of(model)
    for p, g in zip(model.parameters(), before):
        p.grad.data[...] = g
    assert dp.clip_grad_norm_(max_norm) == measured
    for a, w in zip(grads_of(model), want):
        np.testing.assert_array_equal(a, w)
    dp.close()


def test_split_by_targets_weighs_slices_by_their_target_tokens():
    from minigrad.models.data_parallel import split_rows_by_targets
    tgt = np.array([[1, 2, -100], [3, -100, -100], [4, 5, 6], [7, -100, -100]])
    parts = split_rows_by_targets((np.zeros((4, 2)), tgt), 2, -100)
    assert [w for _, w in parts] == [3 / 7, 4 / 7]
    # the weighted slice means equal the whole batch's mean over targets
    vals = np.arange(12, dtype=float).reshape(4, 3)
    mean = lambda t, v: v[t != -100].mean()  # noqa: E731
    got = sum(w * mean(b[1], vals[:2] if i == 0 else vals[2:]) for i, (b, w) in enumerate(parts))
    assert got == pytest.approx(mean(tgt, vals))
