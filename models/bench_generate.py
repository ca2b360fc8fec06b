"""`minigrad bench generate`: prefill and per-token decode time against the memory-bandwidth floor.

Decoding one token reads every weight once (and the cached keys and values), so its floor is
those bytes over the memory bandwidth. Measured in one run, on random weights (the time does not
depend on their values), batch 1:

- prefill: the forward of the first min(context, block_size) tokens into an empty KV cache;
- decode: one token at position context-1 attending to `context` tokens: a decode step with
  context-1 tokens cached (the cache is rewound after each timed step); past block_size, the
  generation's window forward over the last block_size tokens (models/generate.py);
- bandwidth: a read-only reduction (NumPy sum) over a 1 GiB float32 array (--probe-mib) split
  across as many threads as BLAS uses, counted as the bytes read; a copy of it beside, counted
  read + write; the best pass, before and after the timing, the higher kept (a shared machine's
  load moves it; the higher bandwidth gives the lower floor, so the multiple is not flattered);
- floor: (weights' bytes + the cache bytes a step reads) / the read bandwidth;
- PyTorch eager (float32, a small GPT with a preallocated KV cache mirroring ours, loaded with the
  same weights), in a child process when torch is importable, same protocol.

Medians over --steps timed calls after --warmup. Last line: `decode_ms_per_token=<float>`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np

from minigrad.bench import print_load, wall_times
from minigrad.models.gpt import GPT, GPTConfig

CONFIGS = {
    "default": dict(vocab_size=84),   # `minigrad train`'s model on the Shakespeare characters
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(vocab_size=84, block_size=32, n_layer=2, n_head=2, n_embd=32),   # for the tests
}
PROBE_BYTES = 1 << 30


class BenchError(ValueError):
    """A bad flag; the message is one line."""


def make_model(config: str, seed: int, weights: str = "float32") -> GPT:
    from minigrad.models.weights import apply_weights

    model = GPT(GPTConfig(**CONFIGS[config]), seed=seed)
    model.eval()
    apply_weights(model, weights)
    return model


def decode_bytes(model: GPT, context: int) -> tuple[int, int]:
    """(weights' bytes, cache bytes) one decode step at `context` reads: every array the model
    holds once (quantized weights with their scales), except that of the position table, and of
    the embedding when a quantized head copy (lm_head) stands in for it, one row is read; plus the
    keys and values of min(context, block_size) cached tokens in each layer."""
    cfg = model.config
    one_row = {"wpe.weight"} | ({"wte.weight"} if getattr(model, "lm_head", None) is not None else set())
    weights = sum(int(a.nbytes) if name not in one_row else int(a[0].nbytes)
                  for name, a in model.state_dict().items())
    tk = min(context, cfg.block_size)
    return weights, 2 * cfg.n_layer * tk * cfg.n_embd * 4


def bandwidth(threads: int, nbytes: int = PROBE_BYTES, reps: int = 7) -> dict:
    """Read bandwidth (bytes read / s, the best of `reps` passes) of a sum over `nbytes` of float32
    split across `threads` threads (NumPy releases the GIL in the reduction), and copy bandwidth
    (read + write, best pass)."""
    a = np.ones(nbytes // 4, np.float32)
    parts = np.array_split(a, threads)

    def read():
        ts = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    r = min(wall_times(read, 1, reps))   # the best pass: a ceiling (a busy core slows some passes)
    dst = np.empty_like(a)
    c = min(wall_times(lambda: np.copyto(dst, a), 1, max(3, reps // 2)))
    return {"read_gbs": a.nbytes / r / 1e9, "copy_gbs": 2 * a.nbytes / c / 1e9, "threads": threads}


def _blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info
        n = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        if n:
            return int(max(n))
    except ImportError:
        pass
    return os.cpu_count() or 1


def time_minigrad(model: GPT, context: int, warmup: int, steps: int, seed: int) -> dict:
    """Median prefill and decode milliseconds (see the module docstring for what each covers)."""
    from minigrad import no_grad
    from minigrad.models.decode import Decoder
    from minigrad.models.generate import next_logits

    cfg = model.config
    bs = cfg.block_size
    ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, (1, context))
    dec = Decoder(model, 1)
    P = min(context, bs)
    with no_grad():
        def prefill():
            dec.reset()
            dec.prefill(ids[:, :P])
        pre = wall_times(prefill, max(1, warmup // 2), max(5, steps // 6))
        if context <= bs:
            dec.reset()
            if context > 1:
                dec.prefill(ids[:, :context - 1])

            def step():
                dec.cache.length = context - 1        # rewrite the same slot each time
                dec.step(ids[:, context - 1])
        else:
            window = next_logits(model, use_cache=True)
            seq = ids[0].tolist()

            def step():
                window(seq)
        dec_t = wall_times(step, warmup, steps)
        old = wall_times(_forward_step(model, ids), warmup, steps)
        one = _one_blas_thread(lambda: (wall_times(prefill, max(1, warmup // 2), max(5, steps // 6)),
                                        wall_times(step, warmup, steps)))
    return {"forward_ms": 1e3 * float(np.median(old)),
            "one_thread": one and [1e3 * float(np.median(t)) for t in one],
            "prefill_ms": 1e3 * float(np.median(pre)), "decode_ms": 1e3 * float(np.median(dec_t)),
            "decode_p10": 1e3 * float(np.percentile(dec_t, 10)), "decode_p90": 1e3 * float(np.percentile(dec_t, 90)),
            "fast": dec.fast}


def _one_blas_thread(fn):
    """fn() with BLAS on one thread (threadpoolctl), or None without threadpoolctl. On a shared
    machine a BLAS thread that waits for a busy core stalls every GEMV; one thread does not wait."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(limits=1, user_api="blas"):
        return fn()


def _forward_step(model: GPT, ids):
    """The decode step as generation ran it before models/decode.py: the Tensor forward of one token
    with the KV cache; past block_size a fresh cache refilled with the window."""
    from minigrad.models.gpt import KVCache

    cfg, context = model.config, ids.shape[1]
    cache = KVCache(cfg, 1)
    if context <= cfg.block_size:
        if context > 1:
            model(ids[:, :context - 1], cache=cache, last_only=True)

        def step():
            cache.length = context - 1
            model(ids[:, context - 1:], cache=cache, last_only=True)
        return step

    def refill():
        model(ids[:, -cfg.block_size:], cache=KVCache(cfg, 1), last_only=True)
    return refill


# ---------------------------------------------------------------------------- PyTorch reference

def _torch_child() -> int:
    """argv: config context warmup steps seed; prints one JSON line of torch's medians."""
    from minigrad.models.trainer import tune_malloc

    config, context, warmup, steps, seed = sys.argv[1], *(int(a) for a in sys.argv[2:6])
    try:
        import torch
    except ImportError:
        print("torch is not importable (pip install torch)", file=sys.stderr)
        return 3
    tune_malloc()
    model = GPT(GPTConfig(**CONFIGS[config]), seed=seed)   # the same weights as the parent's (float32)
    tm = _torch_gpt(model)
    cfg = model.config
    bs = cfg.block_size
    ids = torch.from_numpy(np.random.default_rng(seed).integers(0, cfg.vocab_size, (1, context)))
    P = min(context, bs)
    with torch.inference_mode():
        def prefill():
            tm.forward(ids[:, :P], 0)
        pre = wall_times(prefill, max(1, warmup // 2), max(5, steps // 6))
        if context <= bs:
            if context > 1:
                tm.forward(ids[:, :context - 1], 0)

            def step():
                tm.forward(ids[:, context - 1:], context - 1)
        else:
            def step():
                tm.forward(ids[:, -bs:], None)          # the window, no cache, as ours
        dec = wall_times(step, warmup, steps)
    print(json.dumps({"prefill_ms": 1e3 * float(np.median(pre)), "decode_ms": 1e3 * float(np.median(dec)),
                      "version": torch.__version__, "threads": torch.get_num_threads()}))
    return 0


def _torch_gpt(model: GPT):
    """A float32 torch GPT with a preallocated KV cache (B=1, nh, block, hs per layer), our weights."""
    import torch
    import torch.nn.functional as tF

    cfg = model.config
    C, nh, hs, bs = cfg.n_embd, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    P = {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}

    def lin(x, name):
        return tF.linear(x, P[name + ".weight"], P.get(name + ".bias"))

    def ln(x, name):
        return tF.layer_norm(x, (C,), P[name + ".weight"], P.get(name + ".bias"), 1e-5)

    class TorchGPT:
        def __init__(self):
            self.K = torch.zeros(cfg.n_layer, 1, nh, bs, hs)
            self.V = torch.zeros(cfg.n_layer, 1, nh, bs, hs)

        def forward(self, idx, start):
            """idx (1, T) at positions start.. (start None: no cache, positions from 0); last logits."""
            T = idx.shape[1]
            s = 0 if start is None else start
            x = P["wte.weight"][idx] + P["wpe.weight"][s:s + T]
            for i in range(cfg.n_layer):
                h = f"h.{i}."
                q, k, v = lin(ln(x, h + "ln_1"), h + "attn.c_attn").view(1, T, 3, nh, hs).permute(2, 0, 3, 1, 4)
                if start is not None:
                    self.K[i, :, :, s:s + T] = k
                    self.V[i, :, :, s:s + T] = v
                    k, v = self.K[i, :, :, :s + T], self.V[i, :, :, :s + T]
                y = tF.scaled_dot_product_attention(q, k, v, is_causal=T > 1)   # T = 1: all past keys
                x = x + lin(y.transpose(1, 2).reshape(1, T, C), h + "attn.c_proj")
                x = x + lin(tF.gelu(lin(ln(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
            return tF.linear(ln(x[:, -1], "ln_f"), P["wte.weight"])

    return TorchGPT()


def _torch_times(config: str, context: int, warmup: int, steps: int, seed: int) -> dict | None:
    cmd = [sys.executable, "-c", "import sys, minigrad.models.bench_generate as b; sys.exit(b._torch_child())",
           config, str(context), str(warmup), str(steps), str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  no PyTorch reference: {last}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- the command

def main(args) -> int:
    if args.context < 1:
        raise BenchError(f"--context must be at least 1, got {args.context}")
    if args.steps < 10:
        raise BenchError(f"--steps must be at least 10, got {args.steps}")
    model = make_model(args.config, args.seed, args.weights)
    cfg = model.config
    threads = _blas_threads()
    print(f"GPT decode ({args.config}): n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, block "
          f"{cfg.block_size}, vocab {cfg.vocab_size}; {args.weights} weights, context {args.context}, batch 1; "
          f"{args.warmup} warm-up + {args.steps} timed steps; {threads} BLAS threads", flush=True)
    print_load("before")
    probe = getattr(args, "probe_mib", 1024) << 20
    before = bandwidth(threads, probe)
    r = time_minigrad(model, args.context, args.warmup, args.steps, args.seed)
    past = args.context > cfg.block_size
    after = bandwidth(threads, probe)
    read = max(before["read_gbs"], after["read_gbs"])   # the higher: the lower floor, the stricter multiple
    print(f"  memory bandwidth: {read:.1f} GB/s read (sum over {probe >> 20} MiB float32 in {threads} threads, "
          "bytes read; "
          f"the higher of {before['read_gbs']:.1f} before and {after['read_gbs']:.1f} after the timing); copy "
          f"{max(before['copy_gbs'], after['copy_gbs']):.1f} GB/s (read + write)", flush=True)
    w_bytes, kv_bytes = decode_bytes(model, args.context)
    floor_ms = (w_bytes + kv_bytes) / (read * 1e9) * 1e3
    print(f"  weights: {w_bytes:,} bytes ({w_bytes / 1e6:.1f} MB read per token); KV cache read per token: "
          f"{kv_bytes:,} bytes", flush=True)
    print(f"  minigrad  prefill {r['prefill_ms']:9.2f} ms ({min(args.context, cfg.block_size)} tokens)   decode "
          f"{r['decode_ms']:8.3f} ms/token (p10 {r['decode_p10']:.3f}, p90 {r['decode_p90']:.3f})"
          f"{'' if r['fast'] else '  [Tensor-forward fallback]'}", flush=True)
    if r["one_thread"] is not None:
        print(f"  minigrad, 1 BLAS thread:  prefill {r['one_thread'][0]:9.2f} ms   decode {r['one_thread'][1]:8.3f} "
              "ms/token", flush=True)
    print(f"  before models/decode.py (the Tensor forward with the cache{'; refilled past block_size' if past else ''}):"
          f" decode {r['forward_ms']:8.3f} ms/token ({r['forward_ms'] / r['decode_ms']:.2f}x this run's decode)",
          flush=True)
    note = ("; past block_size each token runs the window forward (compute-bound), so this floor is only a "
            "lower bound" if past else "")
    print(f"  floor {floor_ms:.3f} ms/token ((weights + KV) / read bandwidth); decode = "
          f"{r['decode_ms'] / floor_ms:.2f}x the floor{note}", flush=True)
    if not args.no_torch:
        t = _torch_times(args.config, args.context, args.warmup, args.steps, args.seed)
        if t is not None:
            print(f"  torch {t['version']} eager float32 ({t['threads']} threads, child process): prefill "
                  f"{t['prefill_ms']:9.2f} ms   decode {t['decode_ms']:8.3f} ms/token; minigrad/torch decode "
                  f"{r['decode_ms'] / t['decode_ms']:.2f}, prefill {r['prefill_ms'] / t['prefill_ms']:.2f}", flush=True)
    print_load("after")
    print(f"decode_ms_per_token={r['decode_ms']:.4f}")
    return 0
