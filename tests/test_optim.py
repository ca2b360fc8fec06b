"""Optimizers against an independent NumPy transcription of PyTorch's documented update rules
(and against torch.optim itself when torch is installed), the schedule, clip_grad_norm_, state."""
import copy
import math

import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
from minigrad import Tensor, optim
from minigrad.nn import Parameter

STEPS = 6


# ------------------------------------------------------------------ reference update rules (torch docs)

class RefSGD:
    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        self.lr, self.mu, self.damp, self.nesterov, self.wd = lr, momentum, dampening, nesterov, weight_decay
        self.buf, self.t = None, 0

    def step(self, p, g):
        self.t += 1
        if self.wd:
            g = g + self.wd * p
        if self.mu:
            self.buf = g.copy() if self.t == 1 else self.mu * self.buf + (1 - self.damp) * g
            g = g + self.mu * self.buf if self.nesterov else self.buf
        return p - self.lr * g


class RefAdam:
    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
        self.lr, (self.b1, self.b2), self.eps, self.wd, self.decoupled = lr, betas, eps, weight_decay, decoupled
        self.m = self.v = 0.0
        self.t = 0

    def step(self, p, g):
        self.t += 1
        if self.wd and self.decoupled:
            p = p - self.lr * self.wd * p
        elif self.wd:
            g = g + self.wd * p
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1 ** self.t)
        v_hat = self.v / (1 - self.b2 ** self.t)
        return p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


CASES = [
    ("sgd", dict(lr=0.1), lambda kw: RefSGD(**kw)),
    ("sgd_momentum", dict(lr=0.1, momentum=0.9), lambda kw: RefSGD(**kw)),
    ("sgd_dampening_wd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1), lambda kw: RefSGD(**kw)),
    ("sgd_nesterov_wd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), lambda kw: RefSGD(**kw)),
    ("adam", dict(lr=0.01), lambda kw: RefAdam(**kw)),
    ("adam_wd", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), lambda kw: RefAdam(**kw)),
    ("adamw", dict(lr=0.01, weight_decay=0.1), lambda kw: RefAdam(decoupled=True, **kw)),
]
OPTIMIZERS = {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW}


def _grad_sequence(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(STEPS)]


def _loss_with_grad(p, g):
    """A loss whose gradient w.r.t. p is exactly g: sum(p * g)."""
    return (p * Tensor(g)).sum()


@pytest.mark.parametrize("name,kw,ref", CASES, ids=[c[0] for c in CASES])
def test_update_rule_matches_reference_over_several_steps(name, kw, ref):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((3, 4))
    p = Parameter(p0.copy())
    opt = OPTIMIZERS[name.split("_")[0]]([p], **kw)
    r, want = ref(kw), p0.copy()
    for g in _grad_sequence(p0.shape, np.float64):
        opt.zero_grad()
        _loss_with_grad(p, g).backward()
        opt.step()
        want = r.step(want, g)
        assert_close(p, want, ulps=256, err_msg=f"{name} step {r.t}")


def test_adamw_default_weight_decay_is_decoupled_and_differs_from_adam():
    p1, p2 = Parameter(np.ones(3)), Parameter(np.ones(3))
    a, w = optim.Adam([p1], lr=0.1, weight_decay=0.5), optim.AdamW([p2], lr=0.1, weight_decay=0.5)
    for opt, p in ((a, p1), (w, p2)):
        p.grad = Tensor(np.array([1.0, -1.0, 0.0]))
        opt.step()
    # AdamW's first step: p (1 - lr wd) - lr g / (|g| + eps); the third element only decays
    step = 0.1 / (1 + 1e-8)
    assert_close(p2, [0.95 - step, 0.95 + step, 0.95], ulps=64)
    assert not np.allclose(p1.numpy(), p2.numpy())
    assert optim.AdamW([Parameter(np.ones(1))]).param_groups[0]["weight_decay"] == 1e-2


def test_params_without_grad_are_skipped():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = optim.Adam([p, q], lr=0.1)
    p.grad = Tensor(np.ones(2))
    opt.step()
    assert q.numpy().tolist() == [1.0, 1.0] and p.numpy()[0] < 1.0


def test_param_groups_with_different_lr():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    a.grad, b.grad = Tensor(np.ones(2)), Tensor(np.ones(3))
    opt.step()
    assert a.numpy().tolist() == [-0.1, -0.1] and b.numpy().tolist() == [-0.5] * 3


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([Parameter(np.ones(1))], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="does not require grad"):
        optim.SGD([Tensor(np.ones(2))])


# ------------------------------------------------------------------ against torch.optim

@pytest.mark.parametrize("name,kw,ref", CASES, ids=[c[0] for c in CASES])
def test_update_rule_matches_torch_optim_in_float32(name, kw, ref):
    torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0 for parity tests")
    p0 = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    p = Parameter(p0.copy())
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = OPTIMIZERS[name.split("_")[0]]([p], **kw)
    tkw = dict(kw)
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name.split("_")[0]]
    if topt is torch.optim.AdamW and "weight_decay" not in tkw:
        tkw["weight_decay"] = 1e-2
    topt = topt([tp], foreach=False, **tkw)
    for g in _grad_sequence(p0.shape, np.float32, seed=3):
        p.grad = Tensor(g.copy())
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        topt.step()
    # a handful of float32 roundings per step, STEPS steps
    np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=64 * np.finfo(np.float32).eps,
                               atol=64 * np.finfo(np.float32).eps)


# ------------------------------------------------------------------ schedule

def test_warmup_cosine_values():
    f = optim.warmup_cosine_lr
    max_lr, min_lr, warm, total = 1.0, 0.1, 4, 24
    assert [f(s, max_lr, min_lr, warm, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4, max_lr, min_lr, warm, total) == pytest.approx(1.0)
    assert f(14, max_lr, min_lr, warm, total) == pytest.approx((max_lr + min_lr) / 2)
    assert f(9, max_lr, min_lr, warm, total) == pytest.approx(min_lr + 0.5 * (1 + math.cos(math.pi / 4)) * 0.9)
    assert f(24, max_lr, min_lr, warm, total) == min_lr and f(1000, max_lr, min_lr, warm, total) == min_lr
    lrs = [f(s, max_lr, min_lr, warm, total) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:])), "cosine decay is monotone"
    assert f(0, 1.0, 0.0, 0, 10) == 1.0       # no warmup: starts at max


def test_warmup_cosine_scheduler_sets_every_group():
    opt = optim.SGD([{"params": [Parameter(np.ones(1))]}, {"params": [Parameter(np.ones(1))]}], lr=5.0)
    sched = optim.WarmupCosine(opt, max_lr=1.0, min_lr=0.0, warmup_steps=2, total_steps=10)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    assert sched.step() == 1.0 and [g["lr"] for g in opt.param_groups] == [1.0, 1.0]


# ------------------------------------------------------------------ clip_grad_norm_

def test_clip_grad_norm_returns_the_pre_clip_norm_and_scales_in_place():
    a, b, c = Parameter(np.zeros(2, np.float32)), Parameter(np.zeros(3, np.float32)), Parameter(np.zeros(1))
    a.grad = Tensor(np.array([3.0, 0.0], np.float32))
    b.grad = Tensor(np.array([0.0, 4.0, 12.0], np.float32))
    grad_array = a.grad.data
    total = float(optim.clip_grad_norm_([a, b, c], max_norm=1.0))   # on a device: a 0-d device array
    assert total == pytest.approx(13.0, rel=1e-12)
    assert a.grad.data is grad_array, "clipping scales the existing gradient arrays in place"
    norm = math.sqrt(float((a.grad.numpy().astype(np.float64) ** 2).sum() + (b.grad.numpy() ** 2).sum()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    assert_close(a.grad, np.array([3.0, 0.0]) / (13.0 + 1e-6), np.float32)
    # below the threshold nothing changes
    before = b.grad.numpy().copy()
    assert float(optim.clip_grad_norm_([b], max_norm=100.0)) == pytest.approx(float(np.linalg.norm(before)))
    assert np.array_equal(b.grad.numpy(), before)
    assert float(optim.clip_grad_norm_([c], max_norm=1.0)) == 0.0


# ------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("name", ["sgd_momentum", "adamw"])
def test_optimizer_state_dict_round_trip_resumes_identically(name):
    kw = {c[0]: c[1] for c in CASES}[name]
    cls = OPTIMIZERS[name.split("_")[0]]
    rng = np.random.default_rng(4)
    ps = [Parameter(rng.standard_normal(s)) for s in [(3, 2), (2,)]]
    opt = cls(ps, **kw)
    grads = [_grad_sequence(p.shape, np.float64, seed=i) for i, p in enumerate(ps)]

    def run(opt, ps, steps):
        for s in steps:
            for p, gs in zip(ps, grads):
                p.grad = Tensor(gs[s].copy())
            opt.step()
    run(opt, ps, range(3))
    sd = copy.deepcopy(opt.state_dict())
    assert all(isinstance(v, (np.ndarray, int, float)) for st in sd["state"].values() for v in st.values())
    ps2 = [Parameter(p.numpy()) for p in ps]
    opt2 = cls(ps2, lr=123.0)                       # hyperparameters come back from the state dict
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    run(opt, ps, range(3, STEPS))
    run(opt2, ps2, range(3, STEPS))
    for p, q in zip(ps, ps2):
        assert np.array_equal(p.numpy(), q.numpy())


def test_optimizer_load_state_dict_rejects_mismatches():
    p = Parameter(np.ones((2, 2)))
    opt = optim.Adam([p])
    p.grad = Tensor(np.ones((2, 2)))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="exp_avg.*\\(2, 2\\).*\\(3,\\)"):
        optim.Adam([Parameter(np.ones(3))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameter groups"):
        optim.Adam([{"params": [Parameter(np.ones(1))]}, {"params": [Parameter(np.ones(1))]}]).load_state_dict(sd)


def test_training_a_tiny_regression_converges():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3))
    w_true = np.array([[1.5], [-2.0], [0.5]])
    y = x @ w_true
    w = Parameter(np.zeros((3, 1)))
    opt = optim.Adam([w], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        loss = mg.nn.functional.mse_loss(Tensor(x) @ w, Tensor(y))
        loss.backward()
        opt.step()
    np.testing.assert_allclose(w.numpy(), w_true, atol=1e-3)
