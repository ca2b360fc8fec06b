"""Checks of device data read later (minigrad.backend.check_values), so a training step on cuda reads
the device once.

On "cpu" an index or class target out of range raises at once (tests/test_errors.py and others hold
the messages). On "cuda" the op files its check as a device flag: the flags are read together at the
next to_host, in the distributed gradient allreduce's info vector, or by raise_deferred_checks(), and
a loss made while a filed check failed is NaN, so the step's one read of its loss shows it. The
device here is the strict stand-in (MINIGRAD_STRICT=cuda, chosen when minigrad is first imported):
each test runs a child process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad
import minigrad.nn.functional as F


def _on_stand_in(script: str) -> dict:
    env = dict(os.environ, MINIGRAD_STRICT="cuda", MINIGRAD_KERNELS="off")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRELUDE = r"""
import json, numpy as np, minigrad
from minigrad import backend
import minigrad.nn.functional as F
def raised(fn):
    try:
        fn()
    except IndexError as e:
        return str(e)
    return None
"""


def test_a_bad_target_on_the_device_makes_the_loss_nan_and_raises_its_message_when_read():
    """-3 is not ignore_index and indexes a row from the end (NumPy takes it, so only our check
    can catch it); CuPy would not raise for 7 either."""
    out = _on_stand_in(PRELUDE + r"""
x = minigrad.Tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), device="cuda")
loss = F.cross_entropy(x, minigrad.Tensor(np.array([1, -3, 0, 0]), device="cuda"))
filed = len(backend._deferred)
nan = bool(np.isnan(float(loss.data)))
message = raised(backend.raise_deferred_checks)
left = len(backend._deferred)
loss2 = F.cross_entropy(x, minigrad.Tensor(np.array([1, -3, 0, 0]), device="cuda"))
via_to_host = raised(lambda: x.numpy())
good = F.cross_entropy(x, minigrad.Tensor(np.array([1, 2, 0, 4]), device="cuda"))
print(json.dumps({"filed": filed, "nan": nan, "message": message, "left": left, "via_to_host": via_to_host,
                  "good_finite": bool(np.isfinite(float(good.data))), "after_good": raised(backend.raise_deferred_checks)}))
""")
    assert out["filed"] >= 1 and out["nan"]
    assert out["message"] == "cross_entropy: target -3 is out of range for 5 classes"
    assert out["left"] == 0
    assert out["via_to_host"] == "cross_entropy: target -3 is out of range for 5 classes"
    assert out["good_finite"] and out["after_good"] is None


def test_the_same_bad_target_on_the_cpu_raises_at_once():
    x = minigrad.Tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    with pytest.raises(IndexError, match=r"^cross_entropy: target -3 is out of range for 5 classes$"):
        F.cross_entropy(x, minigrad.Tensor(np.array([1, -3, 0, 0])))
    w = minigrad.Tensor(np.ones((5, 3), np.float32))
    with pytest.raises(IndexError, match=r"^index 9 is out of range for dimension 0 of size 5"):
        F.embedding(minigrad.Tensor(np.array([1, 9])), w)


def test_an_index_the_device_cannot_take_is_reported_in_our_words_and_leaves_nothing_filed():
    out = _on_stand_in(PRELUDE + r"""
w = minigrad.Tensor(np.ones((5, 3), np.float32), device="cuda")
message = raised(lambda: F.embedding(minigrad.Tensor(np.array([1, 9]), device="cuda"), w))
x = minigrad.Tensor(np.ones((4, 5), np.float32), device="cuda")
target = raised(lambda: F.cross_entropy(x, minigrad.Tensor(np.array([1, 7, 0, 0]), device="cuda")))
print(json.dumps({"message": message, "target": target, "left": len(backend._deferred)}))
""")
    assert out["message"] == "index 9 is out of range for dimension 0 of size 5 (shape (5, 3))"
    assert out["target"] == "cross_entropy: target 7 is out of range for 5 classes"
    assert out["left"] == 0


def test_cross_entropy_on_the_device_equals_the_cpu_bit_for_bit():
    """The device path keeps 1/n on the device (float64, rounded to float32 as the CPU's Python
    float is) and takes no branch on a read: the same loss bits as the CPU's NumPy reference
    (MINIGRAD_KERNELS=off: no native variant) for finite logits, ignored rows included; every row
    ignored gives NaN on both."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((7, 6)).astype(np.float32) * 3
    target = np.array([0, 5, -100, 2, 2, -100, 1])
    script = PRELUDE + f"""
import sys
device = sys.argv[1]
logits = np.array({logits.tolist()}, dtype=np.float32)
x = minigrad.Tensor(logits, device=device, requires_grad=True)
loss = F.cross_entropy(x, minigrad.Tensor(np.array({target.tolist()}), device=device), ignore_index=-100)
loss.backward()
nan = F.cross_entropy(minigrad.Tensor(logits, device=device), minigrad.Tensor(np.full(7, -100), device=device),
                      ignore_index=-100)
print(json.dumps({{"loss": float(loss.data), "grad": x.grad.numpy().tolist(), "nan": float(nan.data),
                   "dtype": str(loss.dtype), "array": type(loss.data).__name__}}))
"""
    runs = {}
    for device in ("cpu", "cuda"):
        env = dict(os.environ, MINIGRAD_STRICT="cuda", MINIGRAD_KERNELS="off")
        proc = subprocess.run([sys.executable, "-c", script, device], capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[device] = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu, dev = runs["cpu"], runs["cuda"]
    assert (cpu["array"], dev["array"]) == ("ndarray", "StrictArray")
    assert cpu["dtype"] == dev["dtype"] == "float32"
    assert np.float32(cpu["loss"]).tobytes() == np.float32(dev["loss"]).tobytes()
    # the gradients come from two backward codes (NumPy arrays take backward_arrays, the stand-in's
    # the Tensor backward), which rounded apart by an ulp before this change too: within 2 ulps of
    # float32; ignored rows exactly 0
    g_dev, g_cpu = np.asarray(dev["grad"], np.float32), np.asarray(cpu["grad"], np.float32)
    np.testing.assert_allclose(g_dev, g_cpu, rtol=2 * np.finfo(np.float32).eps, atol=0)
    assert not g_dev[[2, 5]].any() and not g_cpu[[2, 5]].any()
    assert np.isnan(cpu["nan"]) and np.isnan(dev["nan"])


def test_filed_checks_stay_bounded_when_nothing_reads_them():
    """A loop that reads only its loss: at most 64 checks stay filed (the oldest folded ones go;
    their losses showed any failure)."""
    out = _on_stand_in(PRELUDE + r"""
x = minigrad.Tensor(np.ones((4, 5), np.float32), device="cuda")
t = minigrad.Tensor(np.array([1, 2, 0, 4]), device="cuda")
sizes = []
for _ in range(100):
    F.cross_entropy(x, t)
    sizes.append(len(backend._deferred))
print(json.dumps({"max": max(sizes), "last": sizes[-1]}))
""")
    assert out["max"] <= 64 and out["last"] >= 32


def test_the_distributed_gradient_reduction_reads_the_filed_checks_with_its_info_vector():
    """The step's one read on several ranks: a failed check of this rank's data raises there."""
    out = _on_stand_in(PRELUDE + r"""
from minigrad import distributed
from minigrad.models.gpt import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=0).to("cuda")
buf = distributed.GradientBuffer(model.parameters())
idx = np.zeros((2, 8), np.int64)
def step(targets):
    _, loss = model(idx, targets)
    loss.backward()
    return buf.reduce_(distributed.Communicator(), loss.data)
ok = step(np.ones((2, 8), np.int64))
bad = np.ones((2, 8), np.int64); bad[1, 3] = -4
print(json.dumps({"ok": ok[0], "message": raised(lambda: step(bad)), "left": len(backend._deferred)}))
""")
    assert np.isfinite(out["ok"])
    assert out["message"] == "cross_entropy: target -4 is out of range for 11 classes"
    assert out["left"] == 0


def test_a_training_run_names_a_bad_target_on_the_device_instead_of_a_nan_loss(tmp_path):
    """The Trainer's non-finite-loss stop reads the filed checks first, so a bad target id on cuda
    gets cross_entropy's own message (on the CPU it raises at once, in the op). -4 indexes from the end
    in NumPy and CuPy alike, so only the filed check can catch it."""
    out = _on_stand_in(PRELUDE + r"""
import os
from minigrad.models.gpt import GPT, GPTConfig
from minigrad.models.trainer import Trainer
from minigrad.models.train_config import TrainConfig, TrainError
os.chdir(%r)
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16), seed=0).to("cuda")
def batches(split, rng):
    x = np.zeros((2, 8), np.int64); y = np.ones((2, 8), np.int64); y[1, 2] = -4
    return x, y
cfg = TrainConfig(max_iters=3, warmup_iters=0, eval_interval=3, eval_iters=1, final_eval_iters=1)
try:
    Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], cfg, "run", quiet=True).run()
    message = None
except TrainError as e:
    message = str(e)
print(json.dumps({"message": message}))
""" % str(tmp_path))
    assert out["message"] == "cross_entropy: target -4 is out of range for 11 classes (step 1)"
