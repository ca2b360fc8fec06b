"""`minigrad bench ops`: the engine's per-op overhead and a small MLP train step, next to PyTorch.

A script, not a test. It prints
  - the cost of one tiny op (add of two (1,) float32 tensors), forward alone and forward+backward,
    in µs per op, next to torch's (when torch is importable) and NumPy's bare array add;
  - the median step time (ms) of a matmul-heavy MLP 512→1024→1024→10 at batch 64
    (forward, cross-entropy, backward, SGD step), next to torch's;
  - the fused CPU ops (causal self-attention on a packed q|k|v, the GELU MLP) at one GPT
    data-parallel slice's shapes, native against the NumPy composition they replace.
Medians: the tiny op over 7 blocks of ``--repeat`` ops, the MLP over 30 steps after 5 warm-up.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

BLOCKS = 7
MLP_SIZES = (512, 1024, 1024, 10)
MLP_BATCH = 64
MLP_WARMUP, MLP_STEPS = 5, 30


def _per_op_us(fn, repeat: int) -> float:
    """Median over BLOCKS blocks of the time per call of ``fn`` (which runs one op), in µs."""
    fn()
    blocks = []
    for _ in range(BLOCKS):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        blocks.append((time.perf_counter() - t0) / repeat)
    return statistics.median(blocks) * 1e6


def print_load(when: str) -> None:
    """One line of the load average: other processes' load skews the figures (threaded BLAS/OpenMP
    stall when the cores are oversubscribed)."""
    if hasattr(os, "getloadavg"):
        print(f"  load average {when}: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)


def wall_times(step, warmup: int, total: int) -> list[float]:
    """Seconds of each of `total` calls of step() after `warmup` untimed ones (host clock)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(total):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def _median_ms(step) -> float:
    return statistics.median(wall_times(step, MLP_WARMUP, MLP_STEPS)) * 1e3


# ------------------------------------------------------------------ tiny op

def tiny_op_minigrad(repeat):
    from .tensor import Tensor
    a = Tensor(np.ones(1, np.float32), requires_grad=True)
    b = Tensor(np.ones(1, np.float32), requires_grad=True)

    def fwd():
        a + b

    def fwd_bwd():
        (a + b).backward()
    return _per_op_us(fwd, repeat), _per_op_us(fwd_bwd, repeat)


def tiny_op_torch(torch, repeat):
    a = torch.ones(1, requires_grad=True)
    b = torch.ones(1, requires_grad=True)

    def fwd():
        a + b

    def fwd_bwd():
        (a + b).backward()
    return _per_op_us(fwd, repeat), _per_op_us(fwd_bwd, repeat)


def tiny_op_numpy(repeat):
    a, b = np.ones(1, np.float32), np.ones(1, np.float32)
    return _per_op_us(lambda: a + b, repeat)


# ------------------------------------------------------------------ MLP step

def _mlp_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((MLP_BATCH, MLP_SIZES[0])).astype(np.float32)
    y = rng.integers(0, MLP_SIZES[-1], MLP_BATCH)
    return rng, x, y


def mlp_step_minigrad() -> float:
    from . import nn, optim
    from .nn import functional as F
    from .tensor import Tensor
    rng, x, y = _mlp_data()
    layers = []
    for i, (n_in, n_out) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        layers.append(nn.Linear(n_in, n_out, rng=rng))
        if i < len(MLP_SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    xt = Tensor(x)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(xt), y).backward()
        opt.step()
    return _median_ms(step)


def mlp_step_torch(torch) -> float:
    _, x, y = _mlp_data()
    layers = []
    for i, (n_in, n_out) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(MLP_SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return _median_ms(step)


# ------------------------------------------------------------------ report

# ------------------------------------------------------------------ fused CPU ops
# One data-parallel slice of the default GPT: 6 sequences of 64 tokens, n_embd 128, 4 heads.
SLICE_B, SLICE_T, SLICE_C, SLICE_H = 6, 64, 128, 4


def _fused_cases():
    """(name, make) pairs; make() -> a fwd+bwd closure on fresh Tensors (the fused op, or the
    composition when MINIGRAD_CPU_NATIVE=0 is set around the call)."""
    from .nn import functional as F
    from .tensor import Tensor
    rng = np.random.default_rng(0)
    b, t, c, nh = SLICE_B, SLICE_T, SLICE_C, SLICE_H
    qkv_a = rng.standard_normal((b, t, 3 * c)).astype(np.float32)
    x_a = rng.standard_normal((b * t, c)).astype(np.float32)
    w1_a = (rng.standard_normal((4 * c, c)) * 0.02).astype(np.float32)
    w2_a = (rng.standard_normal((c, 4 * c)) * 0.02).astype(np.float32)

    def attention():
        qkv = Tensor(qkv_a, requires_grad=True)
        return lambda: F.qkv_self_attention(qkv, nh, is_causal=True).sum().backward()

    def mlp():
        x, w1, w2 = (Tensor(a, requires_grad=True) for a in (x_a, w1_a, w2_a))
        return lambda: F.gelu_mlp(x, w1, None, w2, None).sum().backward()
    return [(f"causal attention ({b}x{t}, {c} = {nh} heads)", attention), (f"MLP {c}→{4 * c}→{c} ({b * t} rows)", mlp)]


def fused_op_ms(make, native: bool) -> float:
    """Median ms of one forward+backward; native=False times the NumPy composition instead."""
    old = os.environ.get("MINIGRAD_CPU_NATIVE")
    os.environ["MINIGRAD_CPU_NATIVE"] = "1" if native else "0"
    try:
        return _median_ms(make())
    finally:
        if old is None:
            del os.environ["MINIGRAD_CPU_NATIVE"]
        else:
            os.environ["MINIGRAD_CPU_NATIVE"] = old


def _fmt(v, unit_width=10, digits=2):
    return f"{'—':>{unit_width}}" if v is None else f"{v:>{unit_width}.{digits}f}"


def main(args) -> int:
    repeat = max(int(getattr(args, "repeat", 2000)), 1)
    try:
        import torch
    except ImportError:
        torch = None
    versions = f"numpy {np.__version__}" + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
                                            if torch is not None else ", torch not installed")
    print(f"minigrad bench ops: CPU, float32; {versions}")
    if hasattr(os, "getloadavg"):   # other work on the machine skews every figure below
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"\ntiny op: add of two (1,) tensors, µs per op (median of {BLOCKS} blocks of {repeat})")
    print(f"{'':<26}{'minigrad':>10}{'torch':>10}{'numpy':>10}")
    mf, mb = tiny_op_minigrad(repeat)
    tf, tb = tiny_op_torch(torch, repeat) if torch is not None else (None, None)
    npf = tiny_op_numpy(repeat)
    print(f"{'forward':<26}{_fmt(mf)}{_fmt(tf)}{_fmt(npf)}")
    print(f"{'forward + backward':<26}{_fmt(mb)}{_fmt(tb)}{_fmt(None)}")

    arch = "→".join(map(str, MLP_SIZES))
    print(f"\nMLP {arch}, batch {MLP_BATCH}, ReLU, cross-entropy, SGD(momentum) step: ms per step "
          f"(median of {MLP_STEPS} after {MLP_WARMUP} warm-up)")
    print(f"{'':<26}{'minigrad':>10}{'torch':>10}")
    ms = mlp_step_minigrad()
    ts = mlp_step_torch(torch) if torch is not None else None
    print(f"{'train step':<26}{_fmt(ms)}{_fmt(ts)}")
    if ts:
        print(f"{'ratio minigrad / torch':<26}{ms / ts:>10.2f}")

    print("\nfused CPU ops (kernels/cpu), forward + backward of one GPT data-parallel slice, ms (median of "
          f"{MLP_STEPS}); 'numpy' is the same op as NumPy composition (MINIGRAD_CPU_NATIVE=0)")
    print(f"{'':<44}{'native':>10}{'numpy':>10}{'ratio':>8}")
    for name, make in _fused_cases():
        nat, ref = fused_op_ms(make, True), fused_op_ms(make, False)
        print(f"{name:<44}{_fmt(nat)}{_fmt(ref)}{nat / ref:>8.2f}")
    return 0


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeat", type=int, default=2000)
    raise SystemExit(main(p.parse_args()))
