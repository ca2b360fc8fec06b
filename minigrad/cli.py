"""The `minigrad` console script. Each subcommand's code lives next to what it runs and is
imported lazily, so `minigrad --help` is instant.

  minigrad gradcheck            sweep the op registry, first and second order
  minigrad bench ops            per-op overhead and a small MLP step (next to PyTorch if installed)
  minigrad train / generate     the GPT (models/)
  minigrad bench train          GPT train-step time (models/)
  minigrad bench scaling        step time, memory and decode latency vs sequence length (models/)
  minigrad kernels check|validate|bench   the CUDA kernel workbench (kernels/)
  minigrad embed "a" "b" ...    MiniLM sentence embeddings and their cosine similarities (models/)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _optional(module: str, *args, register: str = "add_subcommands") -> None:
    """Let a package register its subcommands; a package that is absent simply adds none."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if e.name and module.startswith(e.name):
            return
        raise
    getattr(mod, register)(*args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="minigrad", description="minigrad: a small autograd engine, its CUDA kernels and transformers.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    g = sub.add_parser("gradcheck", help="gradcheck every registered op, first and second order",
                       description="Sweep the op registry (minigrad/opinfo.py) in float64: forward vs NumPy, "
                                   "gradcheck and gradgradcheck. Exits 1 on any failure.")
    g.add_argument("--op", action="append", help="only these ops (repeatable)")
    g.add_argument("--first-order-only", action="store_true")
    g.set_defaults(func=lambda a: __import__("minigrad.sweep", fromlist=["main"]).main(a))

    bench = sub.add_parser("bench", help="benchmarks (scripts, not tests)")
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=_Parser)
    bsub.required = True
    b = bsub.add_parser("ops", help="per-op overhead (µs) and a small MLP step, next to PyTorch when installed")
    b.add_argument("--repeat", type=int, default=2000)
    b.set_defaults(func=lambda a: __import__("minigrad.bench", fromlist=["main"]).main(a))

    _optional("minigrad.models.cli", sub, bsub)
    _optional("minigrad.models.scaling", bsub, register="add_bench_subcommands")
    _optional("minigrad.models.embed_cli", sub)
    _optional("minigrad.kernels.cli", sub)
    return p


def closed_stdout() -> int:
    """A reader went away (`minigrad generate | head -2`): exit quietly, as other tools do, with
    128 + SIGPIPE. What is still buffered for stdout is dropped, so the interpreter's last flush
    has nothing to complain about."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return 141


def main(argv=None) -> int:
    for name in ("stdout", "stderr"):     # started with the stream closed (`>&-`): write nowhere
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115  (lives as long as the process)
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()      # a closed pipe shows here, not in the interpreter's last flush
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return closed_stdout()
    except Exception as e:   # one class only, imported when needed; anything else is re-raised
        from minigrad.kernels.cache import CacheSecurityError

        if isinstance(e, CacheSecurityError):
            print(f"minigrad: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
