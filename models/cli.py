"""`minigrad train`, `generate`, `eval`, `launch`, `bench train`, `bench generate`: parsers and handlers.

The flags of `train` and its GPT job live in models/train.py (--model seq2seq: models/seq2seq_train.py);
the helpers the commands share in models/cli_common.py. The top-level CLI calls `add_subcommands(subparsers)`; each registered parser sets `func`, a
handler taking the parsed namespace and returning an exit code. Imports of the engine, the model
and the data code happen inside the handlers so `--help` stays instant. Standalone:
`python -m minigrad.models.cli train ...`.
"""
from __future__ import annotations

import argparse
import sys

from minigrad.models.cli_common import DEFAULT_OUT, check_device, fail


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments give one line (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------- argument definitions

def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=DEFAULT_OUT, help=f"run or checkpoint directory (default {DEFAULT_OUT})")
    p.add_argument("--best", action="store_true",
                   help="the run's best-validation checkpoint (kept by `train --keep-best`) instead of its latest")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each token")
    p.add_argument("--profile", action="store_true", help="print prefill and per-token decode times (stderr)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    _add_weights_arg(p)


def _add_weights_arg(p: argparse.ArgumentParser) -> None:
    # checked by the handler (models/weights.py), so a bad value gets the command's one-line error
    p.add_argument("--weights", default="float32", metavar="{float32,bfloat16,int8}",
                   help="float32 as trained (default), or weight-only quantization for inference")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=DEFAULT_OUT, help=f"run or checkpoint directory (default {DEFAULT_OUT})")
    p.add_argument("--best", action="store_true", help="the run's best-validation checkpoint instead of its latest")
    _add_weights_arg(p)


def _add_bench_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="default", choices=["default", "gpt2", "tiny"],
                   help="default: `minigrad train`'s model; gpt2: L12 D768 H12, block 1024, vocab 50257 (random "
                        "weights); tiny: a 2-layer model for tests")
    p.add_argument("--context", type=int, default=64, help="tokens the decoded token attends to (default 64)")
    _add_weights_arg(p)
    p.add_argument("--steps", type=int, default=40, help="timed decode steps (at least 10; default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--probe-mib", type=int, default=1024, help="size of the bandwidth probe's array (default "
                                                               "1024 MiB: far past the caches)")


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=40, help="timed steps (at least 30; default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--workers", type=int, default=None,
                   help="minigrad's data-parallel workers (default: as `minigrad train`, 2; 1 = one process)")
    p.add_argument("--gen-context", type=int, default=256, help="context length for the tokens/s figures")
    p.add_argument("--no-gen", action="store_true", help="skip the generation figures")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where minigrad's step runs (cuda: one worker; torch on the GPU too when it can)")
    p.add_argument("--ranks", type=int, default=None, metavar="N",
                   help="also time the step on 1 and N MPI ranks (mpiexec; per-rank batch as above): allreduce "
                        "time and share, scaling efficiency; needs the mpi extra")
    p.add_argument("--tcp", action="store_true", help="with --ranks: also a run forced onto TCP (one machine "
                                                      "standing in for two)")


def add_subcommands(subparsers, bench_subparsers=None) -> None:
    """Register train, generate, eval, launch, bench train and bench generate.

    If the caller already has a `bench` parser with its own subparsers, pass those as
    bench_subparsers and `train` is added there; otherwise a `bench` command is created.
    """
    p = subparsers.add_parser("train", help="train a GPT (default: Shakespeare, nanoGPT's CPU config)",
                              description="Train a character-level (or BPE) GPT. Last line: val_loss=<float>.")
    from minigrad.models import seq2seq_train, train  # stdlib-only imports
    train.add_train_args(p)
    seq2seq_train.add_train_args(p)
    p.set_defaults(func=run_train)
    train_parser = p
    p = subparsers.add_parser("generate", help="sample text from a trained GPT checkpoint",
                              description="Stream text sampled from a checkpoint, with a KV cache.")
    _add_generate_args(p)
    p.set_defaults(func=run_generate)
    p = subparsers.add_parser("eval", help="a GPT checkpoint's loss on its data (the trainer's evaluation)",
                              description="Evaluate a checkpoint as the trainer does. Last line: val_loss=<float>.")
    _add_eval_args(p)
    p.set_defaults(func=run_eval)
    p = subparsers.add_parser("launch", help="run `train` on N MPI ranks (mpiexec), a failure in one line",
                              description="mpiexec -n N minigrad train ..., with a killed rank reported in one line "
                                          "(which rank, its signal, the last checkpoint, how to resume).")
    from minigrad.models import mpi_launch  # stdlib-only imports
    mpi_launch.add_launch_args(p)
    p.set_defaults(func=mpi_launch.run, train_parser=train_parser)   # checks the ranks' flags first
    if bench_subparsers is None:
        bench = subparsers.add_parser("bench", help="benchmarks")
        bench_subparsers = bench.add_subparsers(dest="bench_command", metavar="{train,generate}", required=True)
    p = bench_subparsers.add_parser("train", help="median GPT train-step time (and PyTorch's, if importable)",
                                    description="Last line: median_step_ms=<float>.")
    _add_bench_args(p)
    p.set_defaults(func=run_bench_train)
    p = bench_subparsers.add_parser("generate", help="prefill and decode time vs the memory-bandwidth floor "
                                                     "(and PyTorch's, if importable)",
                                    description="Last line: decode_ms_per_token=<float>.")
    _add_bench_generate_args(p)
    p.set_defaults(func=run_bench_generate)


# --------------------------------------------------------------------------- handlers

def run_train(args) -> int:
    from minigrad.models import seq2seq_train, train
    from minigrad.models.trainer import tune_malloc

    tune_malloc()                        # both models: step temporaries stay in glibc's heap
    code = seq2seq_train.dispatch(args)  # --model seq2seq runs there; None means the GPT job
    return train.run(args) if code is None else code


def run_generate(args) -> int:
    from minigrad.models import generate as sample_gpt

    problem = check_device(args.device)
    if problem:
        return fail("generate", problem)
    try:
        sample_gpt.main(args)
    except sample_gpt.USER_ERRORS as e:
        return fail("generate", str(e))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def run_eval(args) -> int:
    from minigrad.models import evaluate
    from minigrad.models.trainer import tune_malloc

    tune_malloc()
    try:
        return evaluate.main(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def run_bench_generate(args) -> int:
    from minigrad.models import bench_generate
    from minigrad.models.trainer import tune_malloc
    from minigrad.models.weights import WeightsError

    tune_malloc()  # as for the other commands: temporaries stay in glibc's heap
    try:
        return bench_generate.main(args)
    except (bench_generate.BenchError, WeightsError) as e:
        return fail("bench generate", str(e))


def run_bench_train(args) -> int:
    from minigrad.models import bench
    from minigrad.models.trainer import tune_malloc

    if args.steps < 30:
        return fail("bench train", f"--steps must be at least 30, got {args.steps}")
    if args.workers is not None and args.workers < 1:
        return fail("bench train", f"--workers must be at least 1, got {args.workers}")
    if args.ranks is not None and (args.ranks < 2 or args.device != "cpu"):
        return fail("bench train", "--ranks N times MPI ranks on the CPU: N at least 2, --device cpu")
    if args.device != "cpu":
        problem = check_device(args.device)
        if problem:
            return fail("bench train", problem)
    tune_malloc()  # for both minigrad and torch: they share this process
    return bench.main(args)


def main(argv=None) -> int:
    parser = OneLineParser(prog="minigrad", description="minigrad language-model commands")
    sub = parser.add_subparsers(dest="command", metavar="{train,generate,eval,launch,bench}", required=True)
    add_subcommands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:      # `python -m minigrad.models.cli generate | head -2`
        from minigrad.cli import closed_stdout
        return closed_stdout()


if __name__ == "__main__":
    sys.exit(main())
