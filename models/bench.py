"""`minigrad bench train`: the GPT training step (forward, backward, clip, AdamW) at the default config.

Times minigrad, then (when importable) the same model in PyTorch eager in a child process: in one
process, torch's OpenMP workers and OpenBLAS's threads spin against each other on a 2-core
machine and both slow down several-fold. Prints medians, their ratio, generation tokens/s with
and without the KV cache at a 256-token context, and last `median_step_ms=<float>` (minigrad's).
Uses random tokens: the step's cost does not depend on the text.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from minigrad.bench import wall_times
from minigrad.models.data_parallel import split_rows
from minigrad.models.gpt import GPT, GPTConfig
from minigrad.models.train_config import TrainConfig
from minigrad.models.trainer import Trainer

VOCAB = 84  # the Shakespeare character vocabulary
BENCH_CONFIG = GPTConfig(vocab_size=VOCAB)  # the `minigrad train` default


def _minigrad_step(model, cfg, tokens, workers: int | None = None):
    def batches(split, rng):
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=tcfg.batch_size)
        chunk = tokens[ix[:, None] + np.arange(cfg.block_size + 1)]
        return chunk[:, :-1], chunk[:, 1:]

    tcfg = TrainConfig() if workers is None else TrainConfig(workers=workers)
    trainer = Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], tcfg, tempfile.gettempdir(), quiet=True,
                      split=split_rows)

    def step():
        return trainer.train_step(tcfg.lr)
    step.trainer = trainer
    return step


def _torch_step(model, cfg, tokens):
    """The same GPT in PyTorch, initialised from the minigrad model's weights."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as tF

    tcfg = TrainConfig()
    C, nh = cfg.n_embd, cfg.n_head

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = tnn.LayerNorm(C, bias=cfg.bias)
            self.c_attn = tnn.Linear(C, 3 * C, bias=cfg.bias)
            self.attn_proj = tnn.Linear(C, C, bias=cfg.bias)
            self.ln_2 = tnn.LayerNorm(C, bias=cfg.bias)
            self.c_fc = tnn.Linear(C, 4 * C, bias=cfg.bias)
            self.mlp_proj = tnn.Linear(4 * C, C, bias=cfg.bias)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4)
            y = tF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.attn_proj(y)
            return x + self.mlp_proj(tF.gelu(self.c_fc(self.ln_2(x))))

    class TorchGPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte = tnn.Embedding(cfg.vocab_size, C)
            self.wpe = tnn.Embedding(cfg.block_size, C)
            self.h = tnn.ModuleList([Block() for _ in range(cfg.n_layer)])
            self.ln_f = tnn.LayerNorm(C, bias=cfg.bias)

        def forward(self, idx, targets):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T))
            for b in self.h:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return tF.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    tm = TorchGPT()
    names = {"attn.c_attn": "c_attn", "attn.c_proj": "attn_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp_proj"}
    state = {}
    for name, arr in model.state_dict().items():
        for a, b in names.items():
            name = name.replace(a, b)
        state[name] = torch.from_numpy(np.array(arr))
    tm.load_state_dict(state, strict=True)
    params = list(tm.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))
    rng = np.random.default_rng(tcfg.seed)  # the same batches as the minigrad Trainer draws

    def step():
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=tcfg.batch_size)
        chunk = torch.from_numpy(tokens[ix[:, None] + np.arange(cfg.block_size + 1)])
        loss = tm(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step, torch.__version__


def _time(step, warmup: int, total: int) -> list[float]:
    """Milliseconds of `total` calls of step() after `warmup` untimed ones."""
    return [t * 1e3 for t in wall_times(step, warmup, total)]


def _torch_times(warmup: int, total: int, seed: int) -> tuple[list[float], str] | None:
    """Run the torch reference in a child process; None (with a note) when torch is unavailable."""
    cmd = [sys.executable, "-c", "import sys, minigrad.models.bench as b; sys.exit(b._torch_child())",
           str(warmup), str(total), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"no PyTorch reference: {last}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  torch: eager, {out['threads']} intra-op threads (in a child process)", flush=True)
    return out["times"], out["version"]


def _torch_child() -> int:
    from minigrad.models.trainer import tune_malloc

    warmup, total, seed = (int(a) for a in sys.argv[1:4])
    try:
        import torch
    except ImportError:
        print("torch is not importable (pip install torch)", file=sys.stderr)
        return 3
    tune_malloc()  # the same allocator treatment as the minigrad side
    cfg = BENCH_CONFIG
    tokens = np.random.default_rng(seed).integers(0, VOCAB, 200_000)
    step, version = _torch_step(GPT(cfg, seed=seed), cfg, tokens)  # the same initial weights
    print(json.dumps({"times": _time(step, warmup, total), "version": version, "threads": torch.get_num_threads()}))
    return 0


def generation_speed(context: int, seed: int) -> dict:
    """Tokens/s generating from a 1-token prompt up to `context` tokens, with and without the cache."""
    from minigrad.models.generate import generate

    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=context), seed=seed)
    out = {}
    for name, use_cache in (("kv_cache", True), ("no_cache", False)):
        generate(model, [0], 8, 1.0, None, 1.0, seed, use_cache)  # warm-up
        t0 = time.perf_counter()
        generate(model, [0], context - 1, 1.0, None, 1.0, seed, use_cache)
        out[name] = (context - 1) / (time.perf_counter() - t0)
    return out


def _print_load(when: str) -> None:
    """Other processes' load skews the figures (threaded BLAS/OpenMP stall when oversubscribed)."""
    import os

    if hasattr(os, "getloadavg"):
        print(f"  load average {when}: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)


def main(args) -> int:
    cfg = BENCH_CONFIG
    tokens = np.random.default_rng(args.seed).integers(0, VOCAB, 200_000)
    model = GPT(cfg, seed=args.seed)
    tc = TrainConfig()
    print(f"GPT train step: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, block {cfg.block_size}, "
          f"batch {tc.batch_size}, vocab {cfg.vocab_size}, AdamW + clip; {args.warmup} warm-up + {args.steps} "
          f"timed steps each", flush=True)
    _print_load("before")
    step = _minigrad_step(model, cfg, tokens, getattr(args, "workers", None))
    times = {"minigrad": _time(step, args.warmup, args.steps)}
    dp = step.trainer.parallel
    print(f"  minigrad: {dp.workers} data-parallel worker {'processes' if dp.backend == 'process' else 'threads'}, "
          "one BLAS thread each" if dp is not None and dp.can_run_concurrently() else
          "  minigrad: one worker", flush=True)
    torch_version = None
    if not args.no_torch:
        ref = _torch_times(args.warmup, args.steps, args.seed)
        if ref is not None:
            times["torch"], torch_version = ref
    med = {}
    for name, ts in times.items():
        med[name] = float(np.median(ts))
        label = f"torch {torch_version}" if name == "torch" else name
        print(f"  {label:<22} median {med[name]:7.2f} ms  (p10 {np.percentile(ts, 10):.2f}, "
              f"p90 {np.percentile(ts, 90):.2f}, n={len(ts)})")
    if "torch" in med:
        print(f"  ratio minigrad/torch   {med['minigrad'] / med['torch']:.3f}")
    if not args.no_gen:
        g = generation_speed(args.gen_context, args.seed)
        print(f"generation to a {args.gen_context}-token context (block_size {args.gen_context}, batch 1): "
              f"{g['kv_cache']:.1f} tok/s with the KV cache, {g['no_cache']:.1f} tok/s without "
              f"({g['kv_cache'] / g['no_cache']:.2f}x)")
    _print_load("after")
    print(f"median_step_ms={med['minigrad']:.3f}")
    return 0
