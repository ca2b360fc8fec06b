"""One rank of a test's `mpiexec -n N python tests/mpi_rank.py [options] -- [train] <minigrad train args>`
(`minigrad launch --exec "python tests/mpi_rank.py [options] --" -n N train ...` puts the `train`).

Runs `minigrad train` in this process, after (per the options):
  --dir DIR        chdir to DIR/rank<r> (a relative --out-dir then names a folder per rank, as on
                   machines that share no disk) and send this rank's stdout and stderr to
                   DIR/rank<r>.out and DIR/rank<r>.err; its process id goes to DIR/rank<r>.pid
  --pids DIR       only write this rank's process id to DIR/rank<r>.pid (its output stays as it is)
  --fault KIND     on rank 1 only: raise-setup (its data cannot be read), raise-train (an exception
                   in step 3), hang-train (step 3 never ends)
Not a test module (no test_ prefix): tests/test_distributed.py launches it.
"""
from __future__ import annotations

import os
import sys


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    opts, train_args = argv[:split], argv[split + 1:]
    if train_args[:1] == ["train"]:
        train_args = train_args[1:]
    options = dict(zip(opts[::2], opts[1::2]))
    from minigrad import distributed

    env = distributed.launched()
    rank = env[1] if env is not None else 0
    if "--dir" in options:
        base = os.path.abspath(options["--dir"])
        os.makedirs(os.path.join(base, f"rank{rank}"), exist_ok=True)
        for fd, suffix in ((1, "out"), (2, "err")):
            f = os.open(os.path.join(base, f"rank{rank}.{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(os.path.join(base, f"rank{rank}"))
        with open(os.path.join(base, f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    if "--pids" in options:
        with open(os.path.join(options["--pids"], f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    fault = options.get("--fault")
    if rank == 1 and fault is not None:
        plant(fault)
    from minigrad.models import cli

    return cli.main(["train", *train_args])


def plant(fault: str) -> None:
    from minigrad.models import data, trainer

    if fault == "raise-setup":
        def unreadable(*args, **kwargs):
            raise data.DataError("--data corpus.txt: no such file (planted on rank 1)")
        data.load_data = unreadable
        return
    real = trainer.Trainer.train_step

    def step(self, lr):
        if self.step == 2:
            if fault == "raise-train":
                raise RuntimeError("planted failure in step 3")
            if fault == "hang-train":
                import time
                time.sleep(3600)
        return real(self, lr)

    if fault not in ("raise-train", "hang-train"):
        raise SystemExit(f"mpi_rank.py: unknown --fault {fault}")
    trainer.Trainer.train_step = step


if __name__ == "__main__":
    sys.exit(main())
