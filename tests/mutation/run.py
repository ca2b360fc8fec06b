"""Plant representative bugs one at a time and report how many the test suite catches.

    python tests/mutation/run.py                  # every mutant; exit 1 if one survives
    python tests/mutation/run.py --list           # the mutants and their tests
    python tests/mutation/run.py --only ID ...    # some of them
    python tests/mutation/run.py --tests-rev REV  # judge the tests of git revision REV instead

Not part of CI (a full run takes some minutes). The repository's files (tracked and untracked,
not ignored) are copied once to a scratch directory, where minigrad/models and minigrad/kernels
are linked to the top-level folders so that the copy is imported, not the editable install. Then
for each mutant: the exact snippet is replaced in its file (it must occur exactly once there,
else the mutant is "stale": the code moved under it, so update the snippet), the mutant's test
files run with pytest -x, and the file is restored. "caught" means pytest failed. Hypothesis runs
with a fixed seed, so a run's score is reproducible.

A mutant is (id, file, snippet, replacement, test group): sign flips, dropped terms in a backward
(the plain path and the create_graph one), off-by-one masks and counts, missing unbroadcasts,
wrong constants, optimizer and trainer details. Every one must be caught; a survivor names a hole.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

GROUPS = {
    "ops": ["tests/test_ops.py", "tests/test_backward_paths.py", "tests/test_tight_gradients.py",
            "tests/test_torch_parity.py", "tests/test_cpu_native.py", "tests/test_shapes_hypothesis.py",
            "tests/test_autograd.py", "tests/test_nn.py", "tests/test_gelu_mlp.py", "tests/test_qkv_attention.py"],
    "optim": ["tests/test_optim.py", "tests/test_cpu_native.py", "tests/test_assembled.py"],
    "trainer": ["tests/test_assembled.py", "tests/test_train.py"],
}
GROUPS["nn"] = GROUPS["ops"]

OPS = "minigrad/ops/elementwise.py"
SOFTMAX, NORM, ATTN, ACT, FUSED = (f"minigrad/ops/{m}.py" for m in (
    "softmax", "normalization", "attention", "activations", "fused"))
MUTANTS = [
    # ---- sign flips
    ("sub-sign", OPS, "unbroadcast(-g, b.shape) if b.requires_grad", "unbroadcast(g, b.shape) if b.requires_grad", "ops"),
    ("div-sign", OPS, "unbroadcast(-ga * a / b, b.shape)", "unbroadcast(ga * a / b, b.shape)", "ops"),
    ("tanh-sign", OPS, "return (g * (1.0 - y * y),)", "return (g * (1.0 + y * y),)", "ops"),
    ("log-softmax-sign", SOFTMAX, "return (g - p * g.sum(axis=self.axis, keepdims=True),)",
     "return (g + p * g.sum(axis=self.axis, keepdims=True),)", "ops"),
    ("mha-padding-mask-inverted", "minigrad/nn/attention.py", "mask = (~kpm.astype(bool))[:, None, None, :]",
     "mask = kpm.astype(bool)[:, None, None, :]", "nn"),
    # ---- a dropped term in a backward
    ("sigmoid-drop-term", OPS, "return (g * y * (1.0 - y),)", "return (g * y,)", "ops"),
    ("pow-drop-log", OPS, "gb = unbroadcast(g * (a ** b) * a1.log(), b.shape)", "gb = unbroadcast(g * (a ** b), b.shape)",
     "ops"),
    ("softmax-drop-term", SOFTMAX, "return (gy - y * gy.sum(axis=self.axis, keepdims=True),)", "return (gy,)", "ops"),
    ("layernorm-arrays-drop-term", NORM, "        gx -= xhat * m2\n", "", "ops"),
    ("layernorm-create-graph-drop-term", NORM,
     "dx = rstd * (gx - gx.mean(axis=1, keepdims=True) - xhat * (gx * xhat).mean(axis=1, keepdims=True))",
     "dx = rstd * (gx - gx.mean(axis=1, keepdims=True))", "ops"),
    ("attention-create-graph-dk-scale", ATTN, "(ds.swapaxes(-1, -2) @ q) * scale, dv", "(ds.swapaxes(-1, -2) @ q), dv",
     "ops"),
    ("gelu-create-graph-drop-term", ACT, "return (g * (cdf + x * pdf),)", "return (g * cdf,)", "ops"),
    ("gelu-mlp-create-graph-dw2", FUSED, "g.swapaxes(0, 1) @ a]", "g.swapaxes(0, 1) @ h]", "ops"),
    ("cross-entropy-arrays-onehot", SOFTMAX, "d[xp_of(d).arange(d.shape[0]), self.safe_t] -= 1",
     "d[xp_of(d).arange(d.shape[0]), self.safe_t] -= 0.5", "ops"),
    ("linear-arrays-bias-mean", "minigrad/ops/linalg.py", "((g2.sum(axis=0) if self.inputs[2].requires_grad else None),)",
     "((g2.mean(axis=0) if self.inputs[2].requires_grad else None),)", "ops"),
    # ---- off-by-one masks and counts
    ("causal-mask-off-by-one", ATTN, "return xp.arange(tk)[None, :] <= xp.arange(tq)[:, None] + (tk - tq)",
     "return xp.arange(tk)[None, :] < xp.arange(tq)[:, None] + (tk - tq)", "ops"),
    ("qkv-create-graph-no-causal-mask", FUSED, "mask = causal_mask(xp_of(qkv.data), t, t) if self.is_causal else None",
     "mask = None", "ops"),
    ("cross-entropy-count-off-by-one", SOFTMAX, "self.scale = (1.0 / n_valid if n_valid",
     "self.scale = (1.0 / (n_valid + 1) if n_valid", "ops"),
    ("mean-count-off-by-one", "minigrad/ops/reduce.py", "(g * (1.0 / max(self.n, 1)))", "(g * (1.0 / max(self.n - 1, 1)))",
     "ops"),
    # ---- a missing unbroadcast
    ("mul-missing-unbroadcast", OPS, "unbroadcast(g * b, a.shape) if a.requires_grad", "g * b if a.requires_grad", "ops"),
    ("matmul-missing-unbroadcast", "minigrad/ops/linalg.py", "ga = unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape)",
     "ga = g2 @ b2.swapaxes(-1, -2)", "ops"),
    ("sum-to-skips-leading-size-1-axes", "minigrad/ops/shape.py", "if s == 1 and a.shape[lead + i] != 1)",
     "if s == 1 and a.shape[lead + i] != 1 and i > 0)", "ops"),
    # ---- a wrong constant
    ("gelu-tanh-constant-5th-digit", ACT, "x * x * x)).tanh())\n            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)",
     "x * x * x)).tanh())\n            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044716 * x * x)", "ops"),
    ("gelu-tanh-arrays-constant-5th-digit", ACT, "self.t\n            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)",
     "self.t\n            du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044716 * x * x)", "ops"),
    ("sqrt-constant", OPS, "return (g * 0.5 / saved(self.y, lambda: self.inputs[0].sqrt()),)",
     "return (g * 0.4999 / saved(self.y, lambda: self.inputs[0].sqrt()),)", "ops"),
    ("sdpa-default-scale", "minigrad/nn/functional.py", "scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None",
     "scale = 1.0 / q.shape[-1] if scale is None", "nn"),
    ("gelu-slope-drop-term", "minigrad/ops/special.py",
     "return x * cdf, cdf + x * xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))",
     "return x * cdf, cdf", "nn"),
    ("qkv-reference-not-causal", FUSED, "mask = causal_mask(xp_of(qkv), t, t) if is_causal else None",
     "mask = None", "nn"),
    # ---- conventions the torch twins pin (tests/test_torch_parity.py): padding, resampling, offsets
    ("conv-same-extra-on-low-side", "minigrad/nn/functional.py",
     "pads = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for",
     "pads = tuple((d * (k - 1) - d * (k - 1) // 2, d * (k - 1) // 2) for", "nn"),
    ("nearest-source-rounded", "minigrad/nn/functional.py", "np.floor(d * np.float32(scale))",
     "np.round(d * np.float32(scale))", "nn"),
    ("bilinear-source-unclamped", "minigrad/nn/functional.py", "pos = np.maximum((np.arange(o) + 0.5) * scale - 0.5, 0.0)",
     "pos = (np.arange(o) + 0.5) * scale - 0.5", "nn"),
    ("trace-offset-sign", "minigrad/manipulation.py", "return diagonal(x, offset, axis1, axis2).sum(axis=-1)",
     "return diagonal(x, -offset, axis1, axis2).sum(axis=-1)", "nn"),
    # ---- optimizer and trainer details
    ("adamw-decay-without-lr", "minigrad/optim.py", "w *= 1.0 - lr * wd", "w *= 1.0 - wd", "optim"),
    ("adam-bias-correction-off-by-one", "minigrad/optim.py", "bc1 = 1.0 - b1 ** t", "bc1 = 1.0 - b1 ** (t + 1)", "optim"),
    ("sgd-dampening-ignored", "minigrad/optim.py", 'buf += (1.0 - g["dampening"]) * d', "buf += d", "optim"),
    ("sgd-nesterov-ignored", "minigrad/optim.py", 'd = d + mu * buf if g["nesterov"] else buf', "d = buf", "optim"),
    ("clip-norm-without-sqrt", "minigrad/optim.py", "total = math.sqrt(sum(grad_sq_norm(g) for g in grads))",
     "total = sum(grad_sq_norm(g) for g in grads)", "optim"),
    ("warmup-off-by-one", "minigrad/optim.py", "return max_lr * (step + 1) / warmup_steps",
     "return max_lr * step / warmup_steps", "optim"),
    ("trainer-decays-every-parameter", "models/trainer.py", "self.opt = optim.AdamW(param_groups(model, cfg.weight_decay),",
     "self.opt = optim.AdamW(model.parameters(),", "trainer"),
]


def copy_repo(dest: Path, tests_rev: str | None) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    for pkg in ("models", "kernels"):   # installed as minigrad.models / minigrad.kernels (package-dir)
        link = dest / "minigrad" / pkg
        if not link.exists():
            link.symlink_to(Path("..") / pkg)
    if tests_rev:
        shutil.rmtree(dest / "tests")
        archive = subprocess.run(["git", "archive", tests_rev, "tests"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def check_imports_resolve_to(dest: Path) -> None:
    code = ("import minigrad, minigrad.models.train as t, minigrad.kernels.runtime as k; "
            "print(minigrad.__file__); print(t.__file__); print(k.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, check=True, capture_output=True, text=True).stdout
    for path in out.split():
        if not Path(path).resolve().is_relative_to(dest.resolve()):
            sys.exit(f"mutation: the scratch copy imports {path}, not its own files; cannot judge mutants")


def run_tests(dest: Path, tests: list[str], timeout: int) -> tuple[str, str]:
    """(verdict, detail): 'caught' with the first failure, 'survived', or 'timeout'."""
    tests = [t for t in tests if (dest / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "--hypothesis-seed=0",
           *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        r = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout} s"
    if r.returncode == 0:
        return "survived", ""
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return "caught", (lines[0] if lines else r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-200:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--tests-rev", metavar="REV", help="use the tests/ folder of this git revision")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutant (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = p.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m[0] in args.only]
    if args.list or not mutants:
        for mid, path, _, _, group in MUTANTS:
            print(f"{mid:36s} {path:30s} {group}")
        return 0 if args.list else 2
    dest = Path(tempfile.mkdtemp(prefix="minigrad-mutation-"))
    try:
        copy_repo(dest, args.tests_rev)
        check_imports_resolve_to(dest)
        groups = sorted({m[4] for m in mutants})
        baseline = sorted({t for g in groups for t in GROUPS[g]})
        t0 = time.time()
        verdict, detail = run_tests(dest, baseline, args.timeout * 2)
        if verdict != "survived":       # the unmutated code must pass, or no verdict below means anything
            print(f"mutation: the unmutated tests do not pass ({verdict}: {detail})")
            return 2
        print(f"baseline: {len(baseline)} test files pass unmutated ({time.time() - t0:.0f} s)", flush=True)
        results = []
        for mid, path, snippet, replacement, group in mutants:
            f = dest / path
            text = f.read_text() if f.exists() else ""
            n = text.count(snippet)
            if n != 1:
                results.append((mid, "stale", f"snippet found {n} times in {path}"))
            else:
                mutated = text.replace(snippet, replacement)
                compile(mutated, str(f), "exec")            # a mutant must be valid Python
                f.write_text(mutated)
                t0 = time.time()
                try:
                    verdict, detail = run_tests(dest, GROUPS[group], args.timeout)
                finally:
                    f.write_text(text)
                results.append((mid, verdict, f"{detail} ({time.time() - t0:.0f} s)"))
            print(f"{results[-1][1]:9s} {mid:36s} {results[-1][2]}", flush=True)
    finally:
        if args.keep:
            print(f"scratch copy kept at {dest}")
        else:
            shutil.rmtree(dest, ignore_errors=True)
    live = [r for r in results if r[1] != "stale"]
    caught = [r for r in live if r[1] in ("caught", "timeout")]
    stale = len(results) - len(live)
    print(f"mutation score: {len(caught)}/{len(live)} caught" + (f", {stale} stale (update their snippets)" if stale else ""))
    for r in live:
        if r[1] == "survived":
            print(f"  survived: {r[0]}")
    return 0 if len(caught) == len(live) else 1


if __name__ == "__main__":
    sys.exit(main())
