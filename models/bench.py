"""`minigrad bench train`: the GPT training step (forward, backward, clip, AdamW) at the default config.

Times minigrad and, when importable, the same model in PyTorch eager, in one process, alternating
rounds so both see the same machine load. Prints medians, their ratio, generation tokens/s with
and without the KV cache at a 256-token context, and last `median_step_ms=<float>` (minigrad's).
Uses random tokens: the step's cost does not depend on the text.
"""
from __future__ import annotations

import math
import sys
import tempfile
import time

import numpy as np

from models.gpt import GPT, GPTConfig
from models.train import TrainConfig, Trainer

VOCAB = 84  # the Shakespeare character vocabulary
BENCH_CONFIG = GPTConfig(vocab_size=VOCAB)  # the `minigrad train` default


def _minigrad_step(model, cfg, tokens):
    def batches(split, rng):
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=tcfg.batch_size)
        chunk = tokens[ix[:, None] + np.arange(cfg.block_size + 1)]
        return chunk[:, :-1], chunk[:, 1:]

    tcfg = TrainConfig()
    trainer = Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], tcfg, tempfile.gettempdir(), quiet=True)
    return lambda: trainer.train_step(tcfg.lr)


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


def _time_rounds(steps: dict, warmup: int, total: int, rounds: int = 4) -> dict:
    """Warm each step up, then run `total` timed steps each in alternating rounds: name -> ms list."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in steps}
    per_round = math.ceil(total / rounds)
    for _ in range(rounds):
        for name, fn in steps.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def generation_speed(context: int, seed: int) -> dict:
    """Tokens/s generating from a 1-token prompt up to `context` tokens, with and without the cache."""
    from models.generate import generate

    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=context), seed=seed)
    out = {}
    for name, use_cache in (("kv_cache", True), ("no_cache", False)):
        generate(model, [0], 8, 1.0, None, 1.0, seed, use_cache)  # warm-up
        t0 = time.perf_counter()
        generate(model, [0], context - 1, 1.0, None, 1.0, seed, use_cache)
        out[name] = (context - 1) / (time.perf_counter() - t0)
    return out


def main(args) -> int:
    cfg = BENCH_CONFIG
    tokens = np.random.default_rng(args.seed).integers(0, VOCAB, 200_000)
    model = GPT(cfg, seed=args.seed)
    steps = {}
    torch_version = None
    if not args.no_torch:
        try:
            steps["torch"], torch_version = _torch_step(model, cfg, tokens)  # copies the initial weights
        except ImportError:
            print("torch is not importable: no PyTorch reference (pip install torch)", file=sys.stderr)
    steps = {"minigrad": _minigrad_step(model, cfg, tokens), **steps}
    tc = TrainConfig()
    print(f"GPT train step: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, block {cfg.block_size}, "
          f"batch {tc.batch_size}, vocab {cfg.vocab_size}, AdamW + clip; {args.warmup} warm-up + {args.steps} "
          f"timed steps each, alternating rounds")
    times = _time_rounds(steps, args.warmup, args.steps)
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
    print(f"median_step_ms={med['minigrad']:.3f}")
    return 0
