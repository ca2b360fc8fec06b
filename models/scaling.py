"""`minigrad bench scaling`: how a GPT's cost grows with sequence length and context.

Two studies on a small GPT (default 2 layers, 4 heads, n_embd 64, batch 4, random tokens):

  train step vs T      median time of one step (forward, backward, AdamW) at each sequence
                       length T, the part of it spent in attention (forward + backward, from one
                       step under minigrad.profile), and the peak memory the step allocates.
  decode vs context    the time to produce one token at context length L, with the KV cache
                       (one new token attends to L cached keys) and without it (the whole
                       context runs again).

Peak memory is measured with tracemalloc, which NumPy reports its array buffers to: the peak of
traced bytes during one step, above what was allocated before it (weights and optimizer moments
are not counted; activations, gradients and temporaries are). On a GPU it is the growth of
CuPy's memory pool over one step instead, and the step-time study adds the fused-attention
kernel curve (MINIGRAD_KERNELS=auto) next to the reference one (MINIGRAD_KERNELS=off).

Writes scaling.csv, scaling_train.png and scaling_generate.png to --out-dir. On a machine shared
with other jobs, OpenBLAS's threads can spin against each other (a 14x slowdown of the batched
attention matmuls was seen here); OPENBLAS_NUM_THREADS=1 gives steadier curves, and the header
line and the plots say which setting ran.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
from pathlib import Path

CSV_FIELDS = ("study", "variant", "seq_len", "median_ms", "min_ms", "attention_ms", "peak_mib", "tokens_per_s")
ATTENTION_OPS = ("Attention", "QKVAttention")  # the profiler rows that are attention: SDPA, or the fused CPU op


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(set(vals))


def add_bench_subcommands(bench_subparsers) -> None:
    """Register `scaling` under the `minigrad bench` subparsers."""
    p = bench_subparsers.add_parser(
        "scaling", help="step time and memory vs sequence length; per-token decode time vs context, with/without KV cache",
        description="A small GPT's train-step time and peak memory against sequence length, and its per-token "
                    "generation latency against context length with and without the KV cache. Writes "
                    "scaling.csv and PNG plots to --out-dir.")
    p.add_argument("--seq-lens", type=_int_list, default=[64, 128, 256, 512, 1024], metavar="T,T,...",
                   help="training sequence lengths (default 64,128,256,512,1024)")
    p.add_argument("--contexts", type=_int_list, default=[64, 128, 256, 512, 1024], metavar="L,L,...",
                   help="generation context lengths (default 64,128,256,512,1024)")
    p.add_argument("--steps", type=int, default=30, help="timed repetitions per point, after warm-up (default 30)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per point (default 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=64)
    p.add_argument("--vocab-size", type=int, default=84)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out-dir", default="out-scaling", help="where scaling.csv and the PNGs go (default out-scaling)")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- measuring

class _Device:
    """Array module, synchronize and peak-memory probe for the chosen device."""

    def __init__(self, device: str):
        self.name = device
        if device == "cuda":
            import cupy
            self.xp = cupy
            self.sync = lambda: cupy.cuda.Device().synchronize()
        else:
            import numpy
            self.xp = numpy
            self.sync = lambda: None

    @contextlib.contextmanager
    def peak(self, out: dict):
        """out["bytes"] = peak bytes allocated inside the block, above those held before it."""
        if self.name == "cuda":
            pool = self.xp.get_default_memory_pool()
            self.sync()
            pool.free_all_blocks()
            before = pool.total_bytes()
            yield
            self.sync()
            out["bytes"] = pool.total_bytes() - before
            return
        import tracemalloc
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            yield
            out["bytes"] = tracemalloc.get_traced_memory()[1] - base
        finally:
            if started:
                tracemalloc.stop()


def _time(fn, steps: int, warmup: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


@contextlib.contextmanager
def _kernel_mode(mode: str | None):
    """Set MINIGRAD_KERNELS for the block (None: leave it)."""
    if mode is None:
        yield
        return
    old = os.environ.get("MINIGRAD_KERNELS")
    os.environ["MINIGRAD_KERNELS"] = mode
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINIGRAD_KERNELS", None)
        else:
            os.environ["MINIGRAD_KERNELS"] = old


def _model(args, block_size: int, dev: _Device):
    from minigrad.models.gpt import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=block_size, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd)
    model = GPT(cfg, seed=args.seed)
    if dev.name != "cpu":
        model.to(dev.name)
    return model


def train_study(args, dev: _Device, log=print) -> list[dict]:
    """One row per (variant, T): step time, attention time, peak memory."""
    import numpy as np

    import minigrad
    from minigrad import optim

    variants = [("reference", "off")]
    if dev.name == "cuda":
        variants.append(("fused kernels", "auto"))
    rows = []
    rng = np.random.default_rng(args.seed)
    for variant, mode in variants:
        for T in args.seq_lens:
            with _kernel_mode(mode if dev.name == "cuda" else None):
                model = _model(args, T, dev)
                opt = optim.AdamW(model.parameters(), lr=1e-3)

                def step(model=model, opt=opt, T=T):
                    x = rng.integers(0, args.vocab_size, (args.batch_size, T))
                    loss = model(x, np.roll(x, -1, axis=1))[1]
                    loss.backward()
                    opt.step()
                    opt.zero_grad()

                times = _time(step, args.steps, args.warmup, dev.sync)
                atts = []
                for _ in range(3):                  # profiled steps, to split off attention
                    with minigrad.profile() as prof:
                        step()
                    atts.append(sum(r["total_s"] for r in prof.key_averages() if r["name"] in ATTENTION_OPS))
                att = float(np.median(atts))
                mem: dict = {}
                with dev.peak(mem):
                    step()
            med = float(np.median(times))
            row = {"study": "train_step", "variant": variant, "seq_len": T, "median_ms": med * 1e3,
                   "min_ms": min(times) * 1e3, "attention_ms": att * 1e3, "peak_mib": mem["bytes"] / 2 ** 20,
                   "tokens_per_s": args.batch_size * T / med}
            rows.append(row)
            log(f"train  {variant:<14} T={T:>5}: step {row['median_ms']:9.2f} ms (median of {len(times)}), "
                f"attention {row['attention_ms']:8.2f} ms (median of 3 profiled steps), peak {row['peak_mib']:8.1f} MiB, "
                f"{row['tokens_per_s']:10,.0f} tok/s")
    return rows


def generate_study(args, dev: _Device, log=print) -> list[dict]:
    """One row per (cache or not, L): time to produce one token at context length L (batch 1)."""
    import numpy as np

    from minigrad import no_grad
    from minigrad.models.gpt import KVCache

    L_max = max(args.contexts)
    model = _model(args, L_max, dev)
    model.eval()
    ids = np.random.default_rng(args.seed).integers(0, args.vocab_size, (1, L_max))
    rows = []
    with no_grad():
        for L in args.contexts:
            # with the cache: L-1 tokens already in it, then one token attends to all L
            cache = KVCache(model.config, 1, xp=dev.xp)
            if L > 1:
                model(ids[:, :L - 1], cache=cache, last_only=True)

            def cached(cache=cache, L=L):
                cache.length = L - 1               # rewrite the same slot each repetition
                model(ids[:, L - 1:L], cache=cache, last_only=True)

            def uncached(L=L):
                model(ids[:, :L], last_only=True)

            for variant, fn in (("kv_cache", cached), ("no_cache", uncached)):
                times = _time(fn, args.steps, args.warmup, dev.sync)
                med = float(np.median(times))
                rows.append({"study": "generate", "variant": variant, "seq_len": L, "median_ms": med * 1e3,
                             "min_ms": min(times) * 1e3, "tokens_per_s": 1.0 / med})
            c, n = rows[-2], rows[-1]
            log(f"decode L={L:>5}: KV cache {c['median_ms']:8.3f} ms/token, no cache {n['median_ms']:8.3f} ms/token "
                f"({n['median_ms'] / c['median_ms']:.1f}x)")
    return rows


# --------------------------------------------------------------------------- output

def growth_exponent(xs, ys) -> float:
    """Slope of log y against log x between the last two points: about 2 for an O(T^2) cost."""
    if len(xs) < 2 or ys[-1] <= 0 or ys[-2] <= 0:
        return float("nan")
    return math.log(ys[-1] / ys[-2]) / math.log(xs[-1] / xs[-2])


def write_csv(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, "")) for k in CSV_FIELDS})
    os.replace(tmp, path)


def _guides(ax, xs, y0, powers=(1, 2)):
    """Dotted reference lines ∝ T^p through (xs[0], y0)."""
    for p in powers:
        ax.plot(xs, [y0 * (x / xs[0]) ** p for x in xs], ":", color="grey", lw=1)
        ax.annotate(f"∝ T{'²' if p == 2 else ''}", (xs[-1], y0 * (xs[-1] / xs[0]) ** p), fontsize=8, color="grey",
                    xytext=(3, 0), textcoords="offset points", va="center")


def plot(rows: list[dict], out_dir: Path, note: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    train = [r for r in rows if r["study"] == "train_step"]
    if train:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
        for variant in dict.fromkeys(r["variant"] for r in train):
            rs = [r for r in train if r["variant"] == variant]
            xs = [r["seq_len"] for r in rs]
            ax.plot(xs, [r["median_ms"] for r in rs], "o-", label=f"whole step ({variant})")
            ax.plot(xs, [r["attention_ms"] for r in rs], "s--", label=f"attention fwd+bwd ({variant})")
            ax.plot(xs, [max(r["median_ms"] - r["attention_ms"], 1e-6) for r in rs], "^-.", alpha=0.7,
                    label=f"everything else ({variant})")
            bx.plot(xs, [r["peak_mib"] for r in rs], "o-", label=variant)
        xs = [r["seq_len"] for r in train if r["variant"] == train[0]["variant"]]
        _guides(ax, xs, train[0]["attention_ms"])
        _guides(bx, xs, train[0]["peak_mib"])
        for a, yl, t in ((ax, "ms per train step", "step time vs sequence length"),
                         (bx, "peak MiB allocated in a step", "peak memory vs sequence length")):
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_xlabel("sequence length T")
            a.set_ylabel(yl)
            a.set_title(t, fontsize=10)
            a.grid(alpha=0.3, which="both")
            a.legend(fontsize=7)
        fig.suptitle(note, fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "scaling_train.png"))
        plt.close(fig)
    gen = [r for r in rows if r["study"] == "generate"]
    if gen:
        fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
        for variant, label in (("kv_cache", "with KV cache"), ("no_cache", "without cache (recompute context)")):
            rs = [r for r in gen if r["variant"] == variant]
            ax.plot([r["seq_len"] for r in rs], [r["median_ms"] for r in rs], "o-", label=label)
        ax.set_xlabel("context length L (tokens)")
        ax.set_ylabel("ms per generated token")
        ax.set_ylim(bottom=0)
        ax.set_title("per-token generation latency vs context", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(note, fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "scaling_generate.png"))
        plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- the command

def _fail(message: str) -> int:
    print(f"minigrad bench scaling: error: {message}", file=sys.stderr)
    return 1


def run(args) -> int:
    if args.steps < 1 or args.warmup < 0:
        return _fail(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    for name in ("batch_size", "n_layer", "n_head", "n_embd", "vocab_size"):
        if getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.n_embd % args.n_head:
        return _fail(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")
    if args.device == "cuda":
        from minigrad.models.cli_common import check_device
        problem = check_device("cuda")
        if problem:
            return _fail(problem)
    out_dir = Path(args.out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _fail(f"cannot create --out-dir {out_dir}: {e.strerror}")
    dev = _Device(args.device)
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "default"
    print(f"GPT n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd} batch={args.batch_size}, "
          f"device {args.device}; medians of {args.steps} after {args.warmup} warm-up; BLAS threads: {threads}",
          flush=True)
    def log(line):
        print(line, flush=True)
    rows = train_study(args, dev, log) + generate_study(args, dev, log)
    csv_path = out_dir / "scaling.csv"
    write_csv(rows, csv_path)
    ref = [r for r in rows if r["study"] == "train_step" and r["variant"] == "reference"]
    if len(ref) >= 2:
        xs = [r["seq_len"] for r in ref]
        print(f"growth between T={xs[-2]} and T={xs[-1]}: step ~T^{growth_exponent(xs, [r['median_ms'] for r in ref]):.2f}, "
              f"attention ~T^{growth_exponent(xs, [r['attention_ms'] for r in ref]):.2f}, "
              f"peak memory ~T^{growth_exponent(xs, [r['peak_mib'] for r in ref]):.2f}")
    gen = {v: [r for r in rows if r["study"] == "generate" and r["variant"] == v] for v in ("kv_cache", "no_cache")}
    if len(gen["kv_cache"]) >= 2:
        c, n = gen["kv_cache"], gen["no_cache"]
        print(f"per-token decode from L={c[0]['seq_len']} to L={c[-1]['seq_len']}: KV cache "
              f"{c[0]['median_ms']:.3f} -> {c[-1]['median_ms']:.3f} ms, no cache {n[0]['median_ms']:.3f} -> "
              f"{n[-1]['median_ms']:.3f} ms")
    note = (f"minigrad GPT {args.n_layer}x{args.n_embd}, {args.n_head} heads, batch {args.batch_size}, {args.device}; "
            f"medians of {args.steps}; BLAS threads {threads}; "
            f"memory: {'CuPy pool growth' if args.device == 'cuda' else 'tracemalloc peak'}")
    try:
        written = plot(rows, out_dir, note)
    except ImportError:
        written = []
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in [csv_path, *written]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="minigrad bench")
    sub = parser.add_subparsers(dest="bench_command", required=True)
    add_bench_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
