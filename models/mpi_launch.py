"""`minigrad launch -n N train ...`: `mpiexec -n N minigrad train ...`, with its failures in one line.

    minigrad launch -n 2 train --out-dir out                  # two ranks on this machine
    minigrad launch -n 2 --hosts a,b train --out-dir out      # two machines, the same venv path on both

Why a wrapper: under MPICH's mpiexec, a rank killed by a signal (`kill -9`, the out-of-memory
killer) makes the launcher SIGKILL the other ranks at once, so no surviving rank can say anything
(its `-disable-auto-cleanup` only delays that kill by a SIGUSR1), and mpiexec prints its own
nine-line BAD TERMINATION banner instead. Here mpiexec runs as a child whose output passes through
this process, which
  - drops that banner and MPICH's `Abort(1) on node ...` line (a rank that calls MPI_Abort has
    printed our one-line error first) and mpiexec's two lines about forwarding Ctrl-C;
  - drops the line each rank prints at its start under this wrapper (MINIGRAD_LAUNCH=1 in its
    environment): ``minigrad-launch: {"rank": r, "pid": p, "host": h, "cwd": d}`` (launch.announce);
  - and, when mpiexec reports a rank killed by a signal and no rank said why, prints one line:
    which rank (by that PID), which signal, rank 0's last checkpoint and the command that resumes.
Everything else passes through unchanged: stderr as it comes (a progress bar's partial lines),
whole lines held back only while they may still turn out to be one of the lines above.

Signals: SIGINT and SIGTERM go to mpiexec (once), which passes them to the ranks: they finish the
step, save and say how to continue. SIGHUP, which MPICH's mpiexec does not pass on, goes on as
SIGTERM. mpiexec runs in its own process group, so a terminal's Ctrl-C reaches it through here only.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from minigrad.models.launch import LAUNCH_ENV as ENV
from minigrad.models.launch import LAUNCH_MARKER as MARKER

_BANNER_PID = re.compile(r"^=\s+PID (\d+) RUNNING AT (\S+)")
_BANNER_CODE = re.compile(r"^=\s+EXIT CODE: (-?\d+)")
_EXIT_STRING = "YOUR APPLICATION TERMINATED WITH THE EXIT STRING:"
_SIGNAL_IN = re.compile(r"\(signal (\d+)\)")
_DROPPED = (re.compile(r"^=+$"), re.compile(r"^=\s"),
            re.compile(r"^YOUR APPLICATION TERMINATED WITH THE EXIT STRING:"),
            re.compile(r"^This typically refers to a problem with your application\.$"),
            re.compile(r"^Please see the FAQ page for debugging suggestions$"),
            re.compile(r"^Abort\(-?\d+\) on node \d+ \(rank \d+ in comm \d+\): application called MPI_Abort"),
            re.compile(r"^\[mpiexec@[^\]]*\] (Sending Ctrl-C to processes as requested|Press Ctrl-C again to "
                       r"force abort)$"))
# what a held-back partial line may become: a line above, or our error line (print may write a line in two)
_PREFIXES = (MARKER, "minigrad ", "=", "YOUR APPLICATION", "This typically", "Please see the FAQ", "Abort(", "[mpiexec@")
_OUR_ERROR = re.compile(r"^minigrad \w+: error: ")


def add_launch_args(p) -> None:
    import argparse

    p.add_argument("-n", "--ranks", type=int, required=True, metavar="N", help="number of ranks (MPI processes)")
    p.add_argument("--hosts", default=None, metavar="A,B", help="the machines (mpiexec -hosts); default: this one")
    p.add_argument("--mpiexec", default=None, metavar="PATH",
                   help="the launcher (default: the mpiexec beside this python, from the mpi extra, else on PATH)")
    p.add_argument("--exec", dest="rank_program", default=None, help=argparse.SUPPRESS)   # tests: each rank's program
    p.add_argument("command", choices=["train"], help="the minigrad command each rank runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")


def find_mpiexec(given: str | None = None) -> str | None:
    """``given``, else the mpiexec of this environment (the mpi extra puts MPICH's beside python),
    else the one on PATH."""
    if given:
        return shutil.which(given)
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def run(args) -> int:
    """The `minigrad launch` handler: mpiexec's exit status, or 1 after our line for a killed rank."""
    from minigrad.models.cli_common import fail

    if args.ranks < 1:
        return fail("launch", f"-n must be at least 1, got {args.ranks}")
    train_args = args.train_parser.parse_args(args.args)   # a bad flag: train's one line, before any rank starts
    mpiexec = find_mpiexec(args.mpiexec)
    if mpiexec is None:
        return fail("launch", ("no mpiexec at " + args.mpiexec) if args.mpiexec else
                    "no mpiexec found: pip install 'minigrad[mpi]' (mpi4py and MPICH's mpiexec)")
    program = shlex.split(args.rank_program) if args.rank_program else [sys.executable, "-m", "minigrad.cli"]
    cmd = [mpiexec, "-n", str(args.ranks), *(["-hosts", args.hosts] if args.hosts else []),
           *program, args.command, *args.args]
    job = Job(cmd, label=f"minigrad {args.command}")
    code = job.run()
    if code == 0:
        return 0
    line = job.verdict(ranks=args.ranks, out_dir=_out_dir(train_args),
                       resume=_resume_command(args, train_args))
    if line is None:
        return code
    print(line, file=sys.stderr, flush=True)
    return 1


def _out_dir(train_args) -> str:
    if getattr(train_args, "model", "gpt") == "seq2seq":
        from minigrad.models.seq2seq_train import run_dir

        return str(run_dir(train_args))
    return str(train_args.out_dir)


def _resume_command(args, train_args) -> str:
    rest = [a for a in args.args if a != "--force"]
    if not train_args.resume:
        rest.append("--resume")
    head = ["minigrad", "launch", "-n", str(args.ranks), *(["--hosts", args.hosts] if args.hosts else [])]
    return shlex.join([*head, args.command, *rest])


def _announcements(text: str) -> list | None:
    """The ranks' start lines in ``text``: one, or several run together (ranks write at once), each
    MARKER + a JSON object with a pid; None when anything else is on the line."""
    decoder, infos, at = json.JSONDecoder(), [], 0
    while at < len(text):
        if not text.startswith(MARKER, at):
            return None
        try:
            info, at = decoder.raw_decode(text, at + len(MARKER))
            int(info["pid"])
        except (ValueError, KeyError, TypeError):
            return None
        infos.append(info)
    return infos


class Job:
    """mpiexec ``cmd`` as a child, its output passed through and read for what went wrong."""

    def __init__(self, cmd, label: str = "minigrad train"):
        self.cmd, self.label = cmd, label
        self.ranks: dict[int, dict] = {}      # pid -> the rank's start line
        self.dead: dict | None = None         # the banner's {"pid", "host", "code", "signal"}
        self.said_error = False               # a rank printed our "<label>: error: ..." line
        self._lock = threading.Lock()

    def run(self) -> int:
        proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, **{ENV: "1"}), preexec_fn=_own_group_ended_with_us)  # noqa: PLW1509  (no thread of ours yet)
        readers = [threading.Thread(target=self._pump, args=(proc.stdout, sys.stdout), daemon=True),
                   threading.Thread(target=self._pump, args=(proc.stderr, sys.stderr), daemon=True)]
        for t in readers:
            t.start()
        previous = {}

        def forward(signum, frame):
            sent = signal.SIGTERM if signum == signal.SIGHUP else signum
            try:
                proc.send_signal(sent)
            except OSError:
                pass

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, forward)
        try:
            code = proc.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        for t in readers:                     # a lingering grandchild may hold a pipe open: not forever
            t.join(timeout=10)
        return code

    # ---- the output
    def _pump(self, pipe, out) -> None:
        """Bytes from ``pipe`` to ``out`` (its binary buffer), whole lines read by ``_line``."""
        sink = getattr(out, "buffer", out)
        pending, at_start, blank, orphans = b"", True, b"", 0
        while True:
            data = os.read(pipe.fileno(), 65536)
            if not data:
                break
            buf, pending = pending + data, b""
            written = []
            while buf:
                nl = buf.find(b"\n")
                if not at_start:                                  # the rest of a line already passed on
                    cut = len(buf) if nl < 0 else nl + 1
                    written.append(buf[:cut])
                    buf, at_start = buf[cut:], nl >= 0
                    continue
                if nl < 0:                                        # a partial line: hold it while it may be ours
                    text = buf.decode(errors="replace")
                    if any(p.startswith(text) or text.startswith(p) for p in _PREFIXES):
                        pending = buf
                    else:
                        written += [blank, buf]
                        blank, at_start = b"", False
                    break
                line, buf = buf[:nl + 1], buf[nl + 1:]
                text = line.decode(errors="replace").rstrip("\r\n")
                if text == "":                                    # held: it may open mpiexec's banner
                    if orphans:                                   # no: a start line's own newline
                        orphans -= 1
                    else:
                        blank += line
                    continue
                if self._line(text):
                    if text.startswith(MARKER):                   # start lines run together: their other
                        orphans += text.count(MARKER) - 1         # newlines follow on their own
                    if _DROPPED[0].match(text):                   # the banner's first rule: its blank line too
                        blank = b""
                    continue
                written += [blank, line]
                blank = b""
            if written:
                sink = _write(sink, b"".join(written))
        if pending or blank:
            _write(sink, blank + pending)

    def _line(self, text: str) -> bool:
        """Note what ``text`` (one line, no newline) says; True when it is dropped."""
        with self._lock:
            if text.startswith(MARKER):
                infos = _announcements(text)
                if infos is None:
                    return False
                for info in infos:
                    self.ranks[int(info["pid"])] = info
                return True
            if _OUR_ERROR.match(text):
                self.said_error = True
                return False
            if not any(p.match(text) for p in _DROPPED):
                return False
            dead = self.dead if self.dead is not None else {}
            m = _BANNER_PID.match(text)
            if m:
                dead.update(pid=int(m.group(1)), host=m.group(2))
            m = _BANNER_CODE.match(text)
            if m:
                dead["code"] = int(m.group(1))
            if text.startswith(_EXIT_STRING):
                m = _SIGNAL_IN.search(text)
                dead["exit"] = text[len(_EXIT_STRING):].strip()
                if m:
                    dead["signal"] = int(m.group(1))
            if dead:
                self.dead = dead
            return True

    # ---- the one line
    def verdict(self, ranks: int, out_dir: str, resume: str) -> str | None:
        """Our one line when mpiexec reported a rank killed (its banner) and no rank said why, else
        None: a rank printed its own line (an error, the watchdog's, an interrupted run's), or
        mpiexec said why it could not start the ranks; its exit status stands."""
        if self.said_error or self.dead is None:
            return None
        pid = self.dead.get("pid")
        info = self.ranks.get(pid, {})
        who = f"rank {info['rank']}" if "rank" in info else "a rank"
        where = f" (PID {pid}" + (f" on {self.dead['host']})" if self.dead.get("host") else ")") if pid else ""
        sig = self.dead.get("signal")
        if sig:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            how = f"was killed by {name}" + (" (the out-of-memory killer sends SIGKILL)"
                                             if sig == signal.SIGKILL else "")
        else:
            how = f"ended ({self.dead.get('exit') or 'exit code ' + str(self.dead.get('code', '?'))})"
        others = "the other rank" if ranks == 2 else f"the other {ranks - 1} ranks"
        what = f"{who}{where} {how}; mpiexec ended {others}"
        kept, resumable = self._kept(out_dir)
        return f"{self.label}: error: {what}; {kept}; " + (f"continue with {resume}" if resumable else "start again")

    def _kept(self, out_dir: str) -> tuple[str, bool]:
        """What rank 0 left in ``out_dir`` (relative to rank 0's working directory), and whether
        there is a checkpoint to resume (unknown on another machine: assumed)."""
        from minigrad.models.checkpoint import latest_name

        rank0 = next((info for info in self.ranks.values() if info.get("rank") == 0), {})
        base = Path(rank0.get("cwd") or os.getcwd())
        path = base / out_dir
        import socket

        if rank0.get("host") not in (None, socket.gethostname()) and not path.exists():
            return f"rank 0's last checkpoint in {path} on {rank0['host']} is kept", True
        name = latest_name(path)
        return (f"the last checkpoint, {path / name}, is kept", True) if name else (f"no checkpoint in {path} yet", False)


def _write(sink, data: bytes):
    """``data`` to ``sink``; the sink, or None once it is gone (a reader closed the pipe: the rest of
    the output is read and dropped, so mpiexec never blocks on a full pipe)."""
    if sink is None:
        return None
    try:
        sink.write(data)
        sink.flush()
    except (BrokenPipeError, OSError, ValueError):
        return None
    return sink


def _own_group_ended_with_us() -> None:
    """In mpiexec's child, before exec: its own process group (a terminal's Ctrl-C reaches it only
    through this process, once), and on Linux a SIGTERM when this process dies (even by SIGKILL),
    which mpiexec passes to the ranks."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
