"""Training on a GPU (`python -m pytest --device cuda`): the nccl communicator on one rank, the fused
optimizer kernels, the clip on the device. Skipped, saying why, on the cpu suite and where CuPy
(or its NCCL) is missing; the strict stand-in (MINIGRAD_STRICT=cuda) runs the clip test only.
"""
from __future__ import annotations

import numpy as np
import pytest

from minigrad import Tensor, backend, distributed, optim
from minigrad.nn import Parameter


@pytest.fixture
def cuda(device):
    if device != "cuda":
        pytest.skip("a GPU test: run with --device cuda")
    return device


@pytest.fixture
def cupy(cuda):
    if backend.strict_stands_in_for_cuda():
        pytest.skip("needs CuPy on a GPU; the strict stand-in serves 'cuda' here")
    import cupy
    return cupy


def test_clip_grad_norm_on_the_device_returns_a_device_norm_and_scales_there(cuda):
    a, b = Parameter(np.zeros(2, np.float32)), Parameter(np.zeros(3, np.float32))
    a.grad = Tensor(np.array([3.0, 0.0], np.float32))
    b.grad = Tensor(np.array([0.0, 4.0, 12.0], np.float32))
    assert backend.is_device_array(a.grad.data)
    norm = optim.clip_grad_norm_([a, b], max_norm=1.0)
    assert backend.is_device_array(norm) and norm.dtype == np.float64      # not read back: no host sync
    assert float(norm) == pytest.approx(13.0, rel=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), np.array([3.0, 0.0], np.float32) / np.float32(13.0 + 1e-6), rtol=1e-6)
    before = b.grad.numpy().copy()
    optim.clip_grad_norm_([b], max_norm=100.0)                              # coefficient 1: no bit changes
    np.testing.assert_array_equal(b.grad.numpy(), before)


@pytest.mark.parametrize("name", ["adamw", "adam_l2", "sgd_nesterov"])
def test_the_fused_update_on_the_gpu_equals_the_numpy_update_bit_for_bit(cupy, monkeypatch, name):
    """--fmad=false and IEEE division/sqrt: the kernel rounds as the NumPy path does (random
    normal values: no denormals for CuPy's -ftz to flush)."""
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "0")
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(5000).astype(np.float32)
    grads = [rng.standard_normal(5000).astype(np.float32) for _ in range(4)]
    make = {"adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
            "adam_l2": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1),
            "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)}[name]
    out = {}
    for dev in ("cpu", "cuda"):
        p = Parameter(w0.copy(), device=dev)
        opt = make([p])
        for g in grads:
            p.grad = Tensor(g.copy(), device=dev)
            opt.step()
        out[dev] = p.numpy()
    np.testing.assert_array_equal(out["cuda"], out["cpu"])


def test_nccl_on_one_rank_runs_the_distributed_step_and_matches_one_process(cupy, tmp_path):
    """With one GPU, NCCL on one rank runs the code path of many: one flat buffer, the in-place
    allreduce on CuPy's stream, the small float64 one read back once, the clip on the views. Its
    sum over one rank is the identity, so it trains as the single-process step does; what may
    differ is cuBLAS's dot inside the clip over a view (reduction order): the norm, hence the clip
    coefficient, to a few float32 ulps, hence each update to about 1e-6 relative."""
    from cupy.cuda import nccl

    if not getattr(nccl, "available", False):
        pytest.skip("CuPy finds no NCCL library here (nvidia-nccl-cu12/13)")
    from minigrad.models.data_parallel import split_rows
    from minigrad.models.gpt import GPT, GPTConfig
    from minigrad.models.train_config import TrainConfig
    from minigrad.models.trainer import Trainer

    tokens = np.random.default_rng(0).integers(0, 11, 2000)

    def batches(split, rng):
        ix = rng.integers(0, len(tokens) - 17, 8)
        chunk = tokens[ix[:, None] + np.arange(17)]
        return chunk[:, :-1], chunk[:, 1:]

    def run():
        model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32), seed=0).to("cuda")
        cfg = TrainConfig(max_iters=5, warmup_iters=0, grad_clip=0.5, eval_interval=5, eval_iters=2,
                          final_eval_iters=2)
        trainer = Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], cfg, tmp_path / distributed.current().backend,
                          quiet=True, split=split_rows)
        losses = [trainer.train_step(1e-2) for _ in range(5)]
        return losses, [p.numpy() for p in model.parameters()], trainer

    single_losses, single_params, _ = run()
    try:
        comm = distributed.init("nccl", device="cuda")
        assert (comm.backend, comm.rank, comm.size) == ("nccl", 0, 1)
        losses, params, trainer = run()
        assert trainer.distributed and trainer.grads is not None and len(trainer.grads.groups) == 1
        buf = np.arange(6, dtype=np.float32)
        comm.allreduce_mean_(buf)                       # a host array goes through the device and back
        np.testing.assert_array_equal(buf, np.arange(6, dtype=np.float32))
    finally:
        distributed.reset()
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    for a, b in zip(params, single_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
