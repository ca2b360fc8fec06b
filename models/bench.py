"""`minigrad bench train`: the GPT training step (forward, backward, clip, AdamW) at the default config.

Times minigrad, then (when importable) the same model in PyTorch eager in a child process: in one
process, torch's OpenMP workers and OpenBLAS's threads spin against each other on a 2-core
machine and both slow down several-fold. Prints medians, their ratio, generation tokens/s with
and without the KV cache at a 256-token context, and last `median_step_ms=<float>` (minigrad's).
Uses random tokens: the step's cost does not depend on the text.

--device cuda: minigrad's step on the GPU (one worker; each step ends with its one host sync, so
wall time covers the device's work) and torch's on the GPU too when torch sees one.

--ranks N (CPU, the mpi extra): the same step under `mpiexec` on 1 rank and on N ranks (the
per-rank batch as one process's; one worker per rank where the ranks fill the cores), and with
--tcp on N ranks forced onto TCP (MPIR_CVAR_NOLOCAL=1, OMPI_MCA_btl=tcp,self): the median step,
the gradient allreduce inside it (which includes waiting for the slowest rank) and alone
(back-to-back after a barrier), its share of the step, and the weak-scaling efficiency
t(1 rank) / t(N ranks); beside them one process with its default workers on the global batch.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import numpy as np

from minigrad.bench import print_load, wall_times
from minigrad.models.data_parallel import split_rows
from minigrad.models.gpt import GPT, GPTConfig
from minigrad.models.train_config import TrainConfig
from minigrad.models.trainer import Trainer

VOCAB = 84  # the Shakespeare character vocabulary
BENCH_CONFIG = GPTConfig(vocab_size=VOCAB)  # the `minigrad train` default


def _minigrad_step(model, cfg, tokens, workers: int | None = None, batch_size: int | None = None):
    """A train_step closure; ``batch_size``: the global batch (per-rank batch x ranks under MPI)."""
    def batches(split, rng):
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=global_batch)
        chunk = tokens[ix[:, None] + np.arange(cfg.block_size + 1)]
        return chunk[:, :-1], chunk[:, 1:]

    tcfg = TrainConfig() if workers is None else TrainConfig(workers=workers)
    global_batch = tcfg.batch_size if batch_size is None else batch_size
    trainer = Trainer(model, batches, lambda m, b: m(b[0], b[1])[1], tcfg, tempfile.gettempdir(), quiet=True,
                      split=split_rows)

    def step():
        return trainer.train_step(tcfg.lr)
    step.trainer = trainer
    return step


def _torch_step(model, cfg, tokens, device: str = "cpu"):
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
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
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
    tm.to(device)
    params = list(tm.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": tcfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2))
    rng = np.random.default_rng(tcfg.seed)  # the same batches as the minigrad Trainer draws

    def step():
        ix = rng.integers(0, len(tokens) - cfg.block_size - 1, size=tcfg.batch_size)
        chunk = torch.from_numpy(tokens[ix[:, None] + np.arange(cfg.block_size + 1)]).to(device)
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


def _torch_times(warmup: int, total: int, seed: int, device: str = "cpu") -> tuple[list[float], str] | None:
    """Run the torch reference in a child process; None (with a note) when torch is unavailable."""
    cmd = [sys.executable, "-c", "import sys, minigrad.models.bench as b; sys.exit(b._torch_child())",
           str(warmup), str(total), str(seed), device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"no PyTorch reference: {last}", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    where = "on the GPU" if device == "cuda" else f"{out['threads']} intra-op threads"
    print(f"  torch: eager, {where} (in a child process)", flush=True)
    return out["times"], out["version"]


def _torch_child() -> int:
    from minigrad.models.trainer import tune_malloc

    warmup, total, seed = (int(a) for a in sys.argv[1:4])
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    try:
        import torch
    except ImportError:
        print("torch is not importable (pip install torch)", file=sys.stderr)
        return 3
    if device == "cuda" and not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no GPU", file=sys.stderr)
        return 3
    tune_malloc()  # the same allocator treatment as the minigrad side
    cfg = BENCH_CONFIG
    tokens = np.random.default_rng(seed).integers(0, VOCAB, 200_000)
    step, version = _torch_step(GPT(cfg, seed=seed), cfg, tokens, device)  # the same initial weights
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


def main(args) -> int:
    cfg = BENCH_CONFIG
    device = getattr(args, "device", "cpu")
    tokens = np.random.default_rng(args.seed).integers(0, VOCAB, 200_000)
    model = GPT(cfg, seed=args.seed)
    if device != "cpu":
        model.to(device)
    tc = TrainConfig()
    print(f"GPT train step: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, block {cfg.block_size}, "
          f"batch {tc.batch_size}, vocab {cfg.vocab_size}, AdamW + clip, on {device}; {args.warmup} warm-up + "
          f"{args.steps} timed steps each", flush=True)
    print_load("before")
    step = _minigrad_step(model, cfg, tokens, getattr(args, "workers", None))
    times = {"minigrad": _time(step, args.warmup, args.steps)}
    dp = step.trainer.parallel
    print(f"  minigrad: {dp.workers} data-parallel worker {'processes' if dp.backend == 'process' else 'threads'}, "
          "one BLAS thread each" if dp is not None and dp.can_run_concurrently() else
          f"  minigrad: one worker{' (on the GPU)' if device == 'cuda' else ''}", flush=True)
    torch_version = None
    if not args.no_torch:
        ref = _torch_times(args.warmup, args.steps, args.seed, device)
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
    ranks = getattr(args, "ranks", None)
    if ranks is not None:
        dist = ranks_bench(ranks, args.warmup, args.steps, args.seed, getattr(args, "tcp", False))
        if dist is None:
            return 1
    if not args.no_gen and device == "cpu":
        g = generation_speed(args.gen_context, args.seed)
        print(f"generation to a {args.gen_context}-token context (block_size {args.gen_context}, batch 1): "
              f"{g['kv_cache']:.1f} tok/s with the KV cache, {g['no_cache']:.1f} tok/s without "
              f"({g['kv_cache'] / g['no_cache']:.2f}x)")
    print_load("after")
    print(f"median_step_ms={med['minigrad']:.3f}")
    return 0


# ---------------------------------------------------------------------------- --ranks N: MPI ranks

def _mpiexec() -> list[str] | None:
    """The mpiexec of this environment (the mpi extra puts MPICH's beside python), else on PATH;
    Open MPI's gets the flags it needs to run as root and on more ranks than cores."""
    import os

    from minigrad.models.mpi_launch import find_mpiexec

    exe = find_mpiexec()
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        return [exe, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [exe]


def _ranks_run(mpiexec, n: int, workers: int, warmup: int, steps: int, seed: int, tcp: bool) -> dict | None:
    import os

    env = dict(os.environ)
    if tcp:
        env.update(MPIR_CVAR_NOLOCAL="1", OMPI_MCA_btl="tcp,self")
    cmd = [*mpiexec, "-n", str(n), sys.executable, "-c",
           "import sys, minigrad.models.bench as b; sys.exit(b._ranks_child())",
           str(warmup), str(steps), str(seed), str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        print(f"  mpiexec -n {n} failed: {tail}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def _ranks_child() -> int:
    """One rank of `bench train --ranks`: times train_step with the per-rank batch of one process,
    then the gradient allreduce alone; rank 0 prints one JSON line with every rank's medians."""
    from minigrad import distributed
    from minigrad.models.trainer import tune_malloc

    warmup, steps, seed, workers = (int(a) for a in sys.argv[1:5])
    tune_malloc()
    comm = distributed.init("mpi", label="minigrad bench train")
    if workers == 1:                 # each rank computes on one core, at 1 rank as at N (weak scaling)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=1, user_api="blas")
    cfg = BENCH_CONFIG
    tokens = np.random.default_rng(seed).integers(0, VOCAB, 200_000)
    per_rank = TrainConfig().batch_size
    step = _minigrad_step(GPT(cfg, seed=seed), cfg, tokens, workers, per_rank * comm.size)
    trainer = step.trainer
    trainer._start_ranks()
    for _ in range(warmup):
        step()
    comm.barrier()
    t_step, t_allreduce, t_pack = [], [], []
    for _ in range(steps):
        before = dict(trainer.grads.times)
        t0 = time.perf_counter()
        step()
        t_step.append(time.perf_counter() - t0)
        t_allreduce.append(trainer.grads.times["allreduce"] - before["allreduce"])
        t_pack.append(trainer.grads.times["pack"] - before["pack"])
    flat = trainer.grads.groups[0][0]
    alone = []
    for _ in range(max(steps, 30)):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_mean_(flat)
        alone.append(time.perf_counter() - t0)
    mine = {"step_ms": float(np.median(t_step)) * 1e3, "allreduce_ms": float(np.median(t_allreduce)) * 1e3,
            "alone_ms": float(np.median(alone)) * 1e3, "pack_ms": float(np.median(t_pack)) * 1e3}
    everyone = comm.allgather_object(mine)
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "workers": trainer.workers, "batch_per_rank": per_rank,
                          "floats": int(flat.size), "per_rank": everyone}))
    if trainer.parallel is not None:
        trainer.parallel.close()
    return 0


def ranks_bench(n: int, warmup: int, steps: int, seed: int, tcp: bool) -> dict | None:
    """Prints the --ranks table; returns its figures, or None (with a note) when MPI cannot run."""
    import importlib.util
    import os

    mpiexec = _mpiexec()
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        print("minigrad bench train: error: --ranks needs mpiexec and mpi4py: pip install 'minigrad[mpi]'",
              file=sys.stderr)
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    workers = max(1, min(TrainConfig().workers, cores // n))   # as `minigrad train` picks under mpiexec
    per_rank = TrainConfig().batch_size
    print(f"MPI ranks (`mpiexec -n N`, {os.path.basename(mpiexec[0])}): per-rank batch {per_rank}, {workers} "
          f"worker{'s' if workers > 1 else ''} per rank, {cores} cores here", flush=True)
    runs = [("1 rank", 1, False), (f"{n} ranks", n, False)] + ([(f"{n} ranks, TCP", n, True)] if tcp else [])
    res = {}
    for label, k, over_tcp in runs:
        r = _ranks_run(mpiexec, k, workers, warmup, steps, seed, over_tcp)
        if r is None:
            return None
        res[label] = r
        step_ms = max(p["step_ms"] for p in r["per_rank"])
        ar = r["per_rank"][0]["allreduce_ms"]
        alone = r["per_rank"][0]["alone_ms"]
        pack = r["per_rank"][0]["pack_ms"]
        print(f"  {label:<22} median {step_ms:7.2f} ms  (gradient allreduce {r['floats'] / 1e6:.2f} M float32: "
              f"{ar:.2f} ms in the step = {100 * ar / step_ms:.1f}%, {alone:.2f} ms alone; packing the "
              f"gradients {pack:.2f} ms)", flush=True)
    # the within-machine alternative: one process, its default workers, the same global batch
    model = GPT(BENCH_CONFIG, seed=seed)
    tokens = np.random.default_rng(seed).integers(0, VOCAB, 200_000)
    one = _minigrad_step(model, BENCH_CONFIG, tokens, None, per_rank * n)
    t_one = float(np.median(_time(one, warmup, steps)))
    if one.trainer.parallel is not None:
        one.trainer.parallel.close()
    print(f"  {'1 process, batch ' + str(per_rank * n):<22} median {t_one:7.2f} ms  ({one.trainer.workers} "
          "fork workers, no MPI)", flush=True)
    t1 = max(p["step_ms"] for p in res["1 rank"]["per_rank"])
    for label in res:
        if label == "1 rank":
            continue
        tn = max(p["step_ms"] for p in res[label]["per_rank"])
        print(f"  scaling efficiency, {label}: {t1 / tn:.2f} (1-rank step / {n}-rank step at the same per-rank "
              f"batch; throughput {n * t1 / tn:.2f}x one rank's, {t_one / tn:.2f}x one process's with workers)")
    return res
