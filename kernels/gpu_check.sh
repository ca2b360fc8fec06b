#!/usr/bin/env bash
# gpu_check.sh OUTDIR [STAGE ...] -- check and measure minigrad's GPU side in one call (issue 13).
#
#   bash kernels/gpu_check.sh OUTDIR                  every stage, in priority order, within the budget
#   bash kernels/gpu_check.sh OUTDIR pytest_cuda gpt  only these stages; earlier results in OUTDIR are kept
#
# Writes OUTDIR/results.md (the summary: stage table, then the figures against the issue's goals),
# OUTDIR/results.json (everything, machine-readable) and OUTDIR/logs.tar.gz (each stage's full log
# and figures). Three files: what a device call can bring back from $OUT. A stage that cannot run
# (no GPU, no compute-sanitizer, no time left, a command the project lacks) is SKIPPED with the reason.
#
# Stages (name: what; minimum and maximum seconds):
#   probe          device, driver, CUDA, CuPy, torch, numpy, tools                         5   60
#   setup          make minigrad.models / minigrad.kernels importable from this tree       5   90
#   validate_gpu   `minigrad kernels validate` on the GPU (every kernel version and dtype  20  120
#                  vs its float64 reference: versions 1 and 2, float32/float64, float16/bfloat16)
#   sanitize_memcheck   compute-sanitizer over small launches of every kernel version     20   90
#   pytest_cuda    python -m pytest --device cuda (the device suites on the GPU)          60  240
#   gpt            300 GPT steps (`minigrad train`): cpu, cuda, cuda MINIGRAD_KERNELS=off  60  200
#   bench_layernorm  kernels/bench.py: GB/s vs a copy, version 1, float32 and float64    30  150
#   bench_attention  kernels/attention_bench.py: TFLOP/s vs unfused and torch SDPA        30  150
#                    (version 1, float32 and float64)
#   bench_attention_v2  the same for version 2 (tensor cores), bfloat16, its goal shapes   30  150
#   bench_layernorm_v2  kernels/bench.py for version 2: bfloat16, and float32 beside       30  120
#                    version 1's float32
#   sanitize_racecheck, sanitize_synccheck, sanitize_initcheck  (as memcheck)             20   90
#   bench_train    `minigrad bench train --device cuda` vs torch on the GPU                30  120
# A stage starts only with its minimum left; its timeout is its maximum, cut to what is left.
#
# Environment: GPU_CHECK_BUDGET (seconds, default 420), PYTHON (default python3), GPT_STEPS (300).
# The machine needs python3 with numpy (and for the GPU stages cupy, for the test stage pytest and
# hypothesis); nothing is downloaded. setup first checks whether `import minigrad.kernels` already
# resolves to this tree, then tries `pip install --no-deps --no-build-isolation --no-index -e .`
# (offline; needs setuptools >= 64 and wheel, as the H200 image has), and else puts a
# sitecustomize.py shim on PYTHONPATH that maps minigrad.models and minigrad.kernels to models/ and
# kernels/ (what the editable install's finder does). Carrying our own wheel is not needed.
set -u -o pipefail

if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 2
fi
OUTDIR=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "cannot create $1"; exit 2; }
shift
ONLY="$*"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-420}
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
LOGS="$WORK/logs"
mkdir -p "$LOGS"
# earlier results (a re-run of some stages keeps the others)
[ -f "$OUTDIR/logs.tar.gz" ] && [ -n "$ONLY" ] && tar -xzf "$OUTDIR/logs.tar.gz" -C "$LOGS" 2>/dev/null
export MINIGRAD_CACHE_DIR=${MINIGRAD_CACHE_DIR:-/tmp/gpu_check_cache/minigrad}
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/gpu_check_cache/cupy}
export MPLBACKEND=Agg PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export REPO WORK LOGS OUTDIR
GPT_STEPS=${GPT_STEPS:-300}
export GPT_STEPS

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }
wanted() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$LOGS/stages.tsv"; }   # name, status, seconds

# stage NAME MIN MAX command...   runs command with output to $LOGS/NAME.log. A command that exits 3
# and whose last log line starts with "SKIPPED" marks the stage skipped with that line's reason.
stage() {
  local name=$1 min=$2 max=$3; shift 3
  wanted "$name" || return 0
  sed -i "/^$name\t/d" "$LOGS/stages.tsv" 2>/dev/null
  local left; left=$(remaining)
  if (( left < min )); then record "$name" "SKIPPED: ${left}s of the budget left, the stage needs ${min}s" 0; return 0; fi
  local tmo=$(( max < left ? max : left ))
  echo "== $name (timeout ${tmo}s, ${left}s left)"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$tmo" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$? status=ok
  local last; last=$(tail -n 1 "$LOGS/$name.log" 2>/dev/null)
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${tmo}s"
  elif (( rc == 3 )) && [[ "$last" == SKIPPED* ]]; then status="$last"
  elif (( rc != 0 )); then status="FAIL (exit $rc)"; fi
  record "$name" "$status" "$(( $(date +%s) - t0 ))"
  echo "   $status"
}
skip() { wanted "$1" && { sed -i "/^$1\t/d" "$LOGS/stages.tsv" 2>/dev/null; record "$1" "SKIPPED: $2" 0; echo "== $1: SKIPPED: $2"; }; return 0; }
touch "$LOGS/stages.tsv"

# ---------------------------------------------------------------------------------------- probe
cat > "$WORK/probe.py" <<'PY'
import json, os, shutil, subprocess, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
def version(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "present")
    except Exception as e:                         # noqa: BLE001
        return None
for mod in ("numpy", "pytest", "hypothesis", "setuptools", "wheel", "tqdm", "matplotlib", "safetensors",
            "threadpoolctl", "tokenizers"):
    info[mod] = version(mod)
try:
    import cupy
    info["cupy"] = cupy.__version__
    rt = cupy.cuda.runtime
    info["cuda_runtime"] = rt.runtimeGetVersion()
    info["cuda_driver"] = rt.driverGetVersion()
    info["gpus"] = rt.getDeviceCount()
    p = rt.getDeviceProperties(0)
    info["device"] = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
    info["sm"] = f"{p['major']}{p['minor']}"
except Exception as e:                             # noqa: BLE001
    info["cupy_error"] = f"{type(e).__name__}: {e}"[:300]
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.cuda.is_available()
    info["torch_cuda_version"] = torch.version.cuda
except Exception as e:                             # noqa: BLE001
    info["torch"] = None
for exe in ("g++", "nvcc", "compute-sanitizer", "nvidia-smi"):
    path = shutil.which(exe) or next((p for p in (f"/usr/local/cuda/bin/{exe}",) if os.path.exists(p)), None)
    info[exe] = path
if info.get("nvidia-smi"):
    try:
        q = subprocess.run([info["nvidia-smi"], "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = q.stdout.strip()
    except Exception as e:                         # noqa: BLE001
        info["nvidia_smi"] = str(e)
info["gpu"] = bool(info.get("gpus"))
print(json.dumps(info, indent=1))
json.dump(info, open(os.path.join(os.environ["LOGS"], "probe.json"), "w"), indent=1)
PY
stage probe 5 60 "$PY" "$WORK/probe.py"
GPU=$("$PY" -c "import json,os; print(int(json.load(open(os.path.join(os.environ['LOGS'],'probe.json'))).get('gpu', False)))" 2>/dev/null || echo 0)
NOGPU="no GPU: $("$PY" -c "import json,os; print(json.load(open(os.path.join(os.environ['LOGS'],'probe.json'))).get('cupy_error','CuPy sees no device')[:160])" 2>/dev/null || echo 'probe failed')"

# ---------------------------------------------------------------------------------------- setup
mkdir -p "$WORK/shim"
cat > "$WORK/shim/sitecustomize.py" <<PY
# minigrad.models and minigrad.kernels from this tree's models/ and kernels/ (gpu_check.sh's setup
# fallback; the editable install's finder does the same)
import importlib.util, sys
_MAP = {"minigrad.models": "$REPO/models", "minigrad.kernels": "$REPO/kernels"}
class _MinigradTree:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in _MAP:
            return importlib.util.spec_from_file_location(name, _MAP[name] + "/__init__.py",
                                                          submodule_search_locations=[_MAP[name]])
        return None
sys.meta_path.append(_MinigradTree)
PY
cat > "$WORK/setup.sh" <<'SH'
check='import minigrad, minigrad.kernels.registry, minigrad.models.gpt, os, sys
root = os.path.realpath(os.environ["REPO"])
files = [minigrad.__file__, minigrad.kernels.registry.__file__, minigrad.models.gpt.__file__]
print("\n".join(files))
sys.exit(0 if all(os.path.realpath(f).startswith(root) for f in files) else 4)'
try() { (cd "$WORK" && PYTHONPATH="$1" "$PY" -c "$check"); }
if try "$REPO"; then echo "mode: ready (minigrad.kernels already resolves to this tree)"; exit 0; fi
echo "not importable from this tree; trying an offline editable install"
"$PY" -m pip install --no-deps --no-build-isolation --no-index -e "$REPO" 2>&1 | tail -n 5
if try "$REPO"; then echo "mode: pip-editable"; exit 0; fi
echo "the editable install did not work here; the sitecustomize shim instead"
if try "$WORK/shim:$REPO"; then echo "mode: shim"; exit 0; fi
echo "minigrad.kernels cannot be imported from $REPO"; exit 1
SH
if wanted setup; then stage setup 5 90 env PY="$PY" bash "$WORK/setup.sh"
else env PY="$PY" bash "$WORK/setup.sh" > "$LOGS/setup.log" 2>&1; fi      # a re-run still needs the mode
if grep -q "mode: shim" "$LOGS/setup.log" 2>/dev/null; then export PYTHONPATH="$WORK/shim:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"; fi

# ---------------------------------------------------------------------------------------- validate
cat > "$WORK/validate_gpu.py" <<'PY'
import json, os, sys
from minigrad.kernels.validate import format_results, gpu_available, validate
if not gpu_available():
    print("SKIPPED: no GPU: CuPy sees no CUDA device"); sys.exit(3)
res = validate(devices=["gpu"])
print(format_results(res))
bad = [r for r in res if not r.ok]
json.dump({"outputs": len(res), "failed": len(bad), "worst_rel": max((r.max_rel for r in res), default=0.0),
           "failures": [f"{r.kernel} {r.dtype} {r.case} {r.output} rel={r.max_rel:.2e} tol={r.tol:.0e}" for r in bad[:30]]},
          open(os.path.join(os.environ["LOGS"], "validate_gpu.json"), "w"), indent=1)
sys.exit(1 if bad or not res else 0)
PY
stage validate_gpu 20 120 "$PY" "$WORK/validate_gpu.py"

# ---------------------------------------------------------------------------------------- sanitizers
# Small launches of every registered kernel version, both dtypes, every validate case (wide, uncached,
# masked, causal, Tq != Tk rows), compiled with -lineinfo so reports name .cu lines.
cat > "$WORK/sanitize_driver.py" <<'PY'
import numpy as np, cupy as cp
from minigrad.kernels import registry, runtime
runtime.NVRTC_OPTIONS = tuple(runtime.NVRTC_OPTIONS) + ("-lineinfo",)
n = 0
for k in registry.KERNELS:
    for dtype in k.op.dtypes:
        for case in k.op.cases:
            inputs = k.op.make_inputs(cp, np.random.default_rng(n), case, np.dtype(dtype))
            k.op.run(k, inputs)
            n += 1
cp.cuda.Device().synchronize()
print(f"driver done: {n} calls of {len(registry.KERNELS)} kernel versions")
PY
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
cat > "$WORK/sanitize.sh" <<'SH'
# sanitize.sh TOOL: the driver under compute-sanitizer; exit 3 + SKIPPED when the tool refuses the device
"$SAN" --tool "$1" --error-exitcode 1 --print-limit 30 "$PY" "$WORK/sanitize_driver.py" 2>&1 | tee "$WORK/san_$1.txt"
rc=${PIPESTATUS[0]}
if grep -q -i -E "device not supported|not supported on this|unable to initialize|error 999" "$WORK/san_$1.txt"; then
  echo "SKIPPED: compute-sanitizer $1 does not support this device or runtime (see the log above)"; exit 3
fi
exit "$rc"
SH
run_sanitizer() {
  if [ "$GPU" != 1 ]; then skip "sanitize_$1" "$NOGPU"
  elif [ -z "$SAN" ]; then skip "sanitize_$1" "compute-sanitizer is not installed here"
  else stage "sanitize_$1" 20 90 env SAN="$SAN" PY="$PY" bash "$WORK/sanitize.sh" "$1"; fi
}
run_sanitizer memcheck

# ---------------------------------------------------------------------------------------- pytest --device cuda
cat > "$WORK/pytest_cuda.sh" <<'SH'
cd "$REPO" && "$PY" -m pytest --device cuda -p no:cacheprovider -o addopts= -q -rfE --maxfail=100 \
   --junitxml="$LOGS/pytest_cuda.xml" 2>&1
SH
stage pytest_cuda 60 240 env PY="$PY" bash "$WORK/pytest_cuda.sh"

# ---------------------------------------------------------------------------------------- GPT, 300 steps
# `minigrad train` on a corpus made of this repository's own text (nothing to download), default
# model, --workers 1, once on cpu, once on cuda with the kernels, once on cuda without; the per-step
# losses of log.jsonl are compared with the cpu run's.
cat > "$WORK/gpt.py" <<'PY'
import json, os, re, subprocess, sys, time
from pathlib import Path
import numpy as np
logs, work, repo = Path(os.environ["LOGS"]), Path(os.environ["WORK"]), Path(os.environ["REPO"])
steps = int(os.environ.get("GPT_STEPS", "300"))
gpu = os.environ.get("GPU") == "1"
corpus = work / "corpus.txt"
parts = [repo / "README.md", repo / "kernels" / "README.md"] + sorted((repo / "minigrad").rglob("*.py")) \
    + sorted((repo / "models").glob("*.py")) + sorted((repo / "kernels").glob("*.py"))
corpus.write_text("\n".join(p.read_text(encoding="utf-8", errors="replace") for p in parts))
runs = [("cpu", "cpu", {})]
if gpu:
    runs += [("cuda", "cuda", {"MINIGRAD_KERNELS": "auto"}), ("cuda_kernels_off", "cuda", {"MINIGRAD_KERNELS": "off"})]
result = {"steps": steps, "corpus_chars": len(corpus.read_text()), "runs": {}}
for label, device, env in runs:
    out = work / f"gpt_{label}"
    cmd = [sys.executable, "-m", "minigrad.cli", "train", "--data", str(corpus), "--max-iters", str(steps),
           "--eval-interval", str(steps), "--final-eval-iters", "50", "--log-interval", "1", "--workers", "1",
           "--device", device, "--out-dir", str(out), "--force", "--quiet", "--profile"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (logs / f"gpt_{label}.log").write_text(" ".join(cmd) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        result["runs"][label] = {"error": (p.stderr or p.stdout).strip().splitlines()[-1][:300] if (p.stderr or p.stdout) else f"exit {p.returncode}"}
        print(f"{label}: FAILED: {result['runs'][label]['error']}")
        continue
    recs = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines() if l.strip()]
    losses = [r["loss"] for r in recs if "loss" in r]
    final = recs[-1]
    ms = re.search(r"([0-9.]+)\s*ms/step", p.stdout + p.stderr)
    result["runs"][label] = {"losses": losses, "val_loss": final.get("val_loss"), "train_loss": final.get("train_loss"),
                             "wall_s": wall, "profile_ms_per_step": float(ms.group(1)) if ms else None}
    print(f"{label}: {len(losses)} steps in {wall:.1f}s, first {losses[0]:.4f}, last {losses[-1]:.4f}, "
          f"val {final.get('val_loss')}")
ref = result["runs"].get("cpu", {}).get("losses")
ok = ref is not None and all("error" not in r for r in result["runs"].values())
for label, r in result["runs"].items():
    if label == "cpu" or ref is None or "losses" not in r:
        continue
    a, b = np.array(r["losses"]), np.array(ref)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    w = 25
    smooth = lambda x: np.convolve(x, np.ones(w) / w, mode="valid")
    r["step1_rel"] = float(abs(a[0] - b[0]) / abs(b[0]))
    r["max_abs_first10"] = float(np.abs(a[:10] - b[:10]).max())
    r["max_rel_smoothed"] = float((np.abs(smooth(a) - smooth(b)) / smooth(b)).max()) if n >= w else None
    r["val_rel"] = abs(r["val_loss"] - result["runs"]["cpu"]["val_loss"]) / result["runs"]["cpu"]["val_loss"]
    # step 1 is one float32 forward of the same model on the same batch: only summation order differs
    # (about 1e-6 relative; 1e-4 allows reductions a thousand long). Later steps drift apart as
    # rounding differences grow through AdamW; the curves must still agree once smoothed over 25 steps.
    r["pass"] = bool(r["step1_rel"] <= 1e-4 and (r["max_rel_smoothed"] or 0) <= 0.02 and r["val_rel"] <= 0.02)
    ok = ok and r["pass"]
    print(f"{label} vs cpu: step 1 rel {r['step1_rel']:.1e}, max |dloss| first 10 {r['max_abs_first10']:.1e}, "
          f"smoothed max rel {r['max_rel_smoothed']}, val rel {r['val_rel']:.2%} -> {'PASS' if r['pass'] else 'FAIL'}")
json.dump(result, open(logs / "gpt.json", "w"))
if not gpu and ok:
    print("SKIPPED: the cpu run passed; the cuda runs need a GPU (" + os.environ.get("NOGPU", "") + ")")
    sys.exit(3)
sys.exit(0 if ok else 1)
PY
stage gpt 60 200 env GPU="$GPU" NOGPU="$NOGPU" "$PY" "$WORK/gpt.py"

# ---------------------------------------------------------------------------------------- benches
cat > "$WORK/bench_layernorm.py" <<'PY'
import os, sys
from minigrad.kernels.validate import gpu_available
if not gpu_available():
    print("SKIPPED: no GPU: CuPy sees no CUDA device"); sys.exit(3)
from minigrad.kernels import dtypes
from minigrad.kernels.bench import bench
v2 = len(sys.argv) > 1 and sys.argv[1] == "v2"
# version 1: float32, float64; version 2: bfloat16 (the goal) and float32 (beside version 1's)
dts = ["float32", dtypes.BFLOAT16] if v2 else ["float32", "float64"]
name = "bench_layernorm_v2.json" if v2 else "bench_layernorm.json"
sys.exit(bench(dtype=dts, versions=(2,) if v2 else (1,), json_path=os.path.join(os.environ["LOGS"], name)))
PY
cat > "$WORK/bench_attention.py" <<'PY'
import os, sys
from minigrad.kernels.validate import gpu_available
if not gpu_available():
    print("SKIPPED: no GPU: CuPy sees no CUDA device"); sys.exit(3)
from minigrad.kernels import dtypes
from minigrad.kernels.attention_bench import main
v2 = len(sys.argv) > 1 and sys.argv[1] == "v2"
dts = [dtypes.BFLOAT16] if v2 else ["float32", "float64"]
name = "bench_attention_v2.json" if v2 else "bench_attention.json"
sys.exit(main(dtype=dts, versions=(2,) if v2 else (1,), json_path=os.path.join(os.environ["LOGS"], name)))
PY
stage bench_layernorm 30 150 "$PY" "$WORK/bench_layernorm.py"
stage bench_attention 30 150 "$PY" "$WORK/bench_attention.py"
stage bench_attention_v2 30 150 "$PY" "$WORK/bench_attention.py" v2
stage bench_layernorm_v2 30 120 "$PY" "$WORK/bench_layernorm.py" v2

run_sanitizer racecheck
run_sanitizer synccheck
run_sanitizer initcheck

# ---------------------------------------------------------------------------------------- bench train
if ! "$PY" -m minigrad.cli bench train --help 2>/dev/null | grep -q -- "--device"; then
  skip bench_train "\`minigrad bench train\` has no --device option yet (models/bench.py times the CPU step only)"
elif [ "$GPU" != 1 ]; then skip bench_train "$NOGPU"
else stage bench_train 30 120 "$PY" -m minigrad.cli bench train --device cuda --workers 1 --no-gen; fi

# ---------------------------------------------------------------------------------------- report
cat > "$WORK/report.py" <<'PY'
import json, os
from pathlib import Path
logs, outdir = Path(os.environ["LOGS"]), Path(os.environ["OUTDIR"])
def load(name):
    try:
        return json.loads((logs / name).read_text())
    except Exception:                              # noqa: BLE001
        return None
def fmt(x, spec, scale=1.0):
    return "-" if x is None else format(x * scale, spec)
stages = [dict(zip(("name", "status", "seconds"), line.rstrip("\n").split("\t")))
          for line in (logs / "stages.tsv").read_text().splitlines() if line.strip()]
p = load("probe.json") or {}
R = {"probe": p, "stages": stages}
L = ["# minigrad GPU check", "",
     f"{p.get('device', 'no GPU')} (sm_{p.get('sm', '-')}; {p.get('nvidia_smi', '')}); CUDA runtime "
     f"{p.get('cuda_runtime', '-')}, driver {p.get('cuda_driver', '-')}; CuPy {p.get('cupy', '-')}; torch "
     f"{p.get('torch', '-')}; numpy {p.get('numpy', '-')}; python {p.get('python')}; compute-sanitizer "
     f"{'yes' if p.get('compute-sanitizer') else 'no'}", "", "| stage | status | s |", "|---|---|---|"]
L += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in stages]
v = load("validate_gpu.json")
if v:
    R["validate_gpu"] = v
    L += ["", f"validate (GPU): {v['outputs'] - v['failed']}/{v['outputs']} outputs within tolerance, worst rel {v['worst_rel']:.2e}"]
    L += [f"- {f}" for f in v["failures"]]
for s in stages:
    if s["name"] == "pytest_cuda":
        log = (logs / "pytest_cuda.log").read_text() if (logs / "pytest_cuda.log").exists() else ""
        tail = [l for l in log.splitlines() if " passed" in l or " failed" in l or " skipped" in l]
        R["pytest_cuda"] = {"summary": tail[-1] if tail else None,
                            "failures": [l for l in log.splitlines() if l.startswith(("FAILED", "ERROR"))][:40]}
        L += ["", f"pytest --device cuda: {R['pytest_cuda']['summary']}"] + [f"- {l}" for l in R["pytest_cuda"]["failures"]]
g = load("gpt.json")
if g:
    R["gpt"] = {k: v for k, v in g.items() if k != "runs"}
    R["gpt"]["runs"] = {k: {kk: vv for kk, vv in r.items()} for k, r in g["runs"].items()}
    L += ["", f"GPT, {g['steps']} steps of `minigrad train` (default model, --workers 1, this repo's text):", "",
          "| run | wall s | val loss | step-1 rel diff | max abs diff, first 10 | smoothed max rel | val rel | pass |",
          "|---|---|---|---|---|---|---|---|"]
    for lab, r in g["runs"].items():
        if "error" in r:
            L.append(f"| {lab} | ERROR: {r['error'][:80]} | | | | | | |"); continue
        L.append(f"| {lab} | {r['wall_s']:.1f} | {fmt(r.get('val_loss'), '.4f')} | {fmt(r.get('step1_rel'), '.1e')} | "
                 f"{fmt(r.get('max_abs_first10'), '.1e')} | {fmt(r.get('max_rel_smoothed'), '.2%')} | "
                 f"{fmt(r.get('val_rel'), '.2%')} | {r.get('pass', '(reference)')} |")
for key, goal in (("bench_layernorm", "version 1: fwd and bwd >= 80% of the copy, float32, widths 768-8192"),
                  ("bench_layernorm_v2", "version 2: fwd and bwd >= 80% of the copy, bfloat16, widths 768-8192")):
  b = load(key + ".json")
  if b:
    R[key] = b
    L += ["", f"layernorm (goal, {goal}); device-to-device copy "
          f"{b['copy_GBs']:.0f} GB/s in this run:", "",
          "| kernel | case | dtype | check | us | GB/s | % copy | how | unfused GB/s | torch GB/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        L.append(f"| {r['kernel']} | {r['case']} | {r['dtype']} | {'ok' if r['check_ok'] else 'FAIL %.1e' % r['check_rel']} | "
                 f"{fmt(r['fused_s'], '.1f', 1e6)} | {fmt(r['fused_GBs'], '.0f')} | {fmt(r['pct_copy'], '.0f')} | {r['method']} | "
                 f"{fmt(r['unfused_GBs'], '.0f')} | {fmt(r['torch_GBs'], '.0f')} |")
for key, goal in (("bench_attention", "version 1: fused >= 2x the unfused composition at T=1024, d=64"),
                  ("bench_attention_v2", "version 2, bfloat16: forward >= 150 TFLOP/s at B4 H16 T2048 d128; "
                   "fwd+bwd >= 50% of torch SDPA's TFLOP/s at T=1024 to 4096")):
  a = load(key + ".json")
  if a:
    R[key] = a
    gemm = a.get("gemm_flops")
    L += ["", f"attention (goal, {goal})" + (f"; float16 GEMM {gemm / 1e12:.0f} TFLOP/s in this run" if gemm else "")
          + ":", "",
          "| case | version | dtype | pass | check | fused ms | TFLOP/s | % peak | % GEMM | how | unfused ms | speedup | "
          "torch ms | torch TFLOP/s | % torch |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in a["rows"]:
        chk = "-" if r["check_ok"] is None else ("ok" if r["check_ok"] else "FAIL %.1e" % r["check_rel"])
        pct_torch = None if not r.get("torch_tflops") else 100 * r["tflops"] / r["torch_tflops"]
        L.append(f"| {r['case']} | {r.get('version', 1)} | {r['dtype']} | {r['pass_']} | {chk} | "
                 f"{fmt(r['fused_s'], '.3f', 1e3)} | {fmt(r['tflops'], '.2f')} | {fmt(r['pct_peak'], '.0f')} | "
                 f"{fmt(r.get('pct_gemm'), '.0f')} | {r['method']} | {fmt(r['unfused_s'], '.3f', 1e3)} | "
                 f"{fmt(r['speedup'], '.2f')} | {fmt(r['torch_s'], '.3f', 1e3)} | {fmt(r['torch_tflops'], '.2f')} | "
                 f"{fmt(pct_torch, '.0f')} |")
for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
    f = logs / f"sanitize_{tool}.log"
    if f.exists():
        summ = [l for l in f.read_text().splitlines() if "ERROR SUMMARY" in l or "RACECHECK SUMMARY" in l]
        R.setdefault("sanitize", {})[tool] = summ[-1] if summ else None
if R.get("sanitize"):
    L += ["", "compute-sanitizer: " + "; ".join(f"{k}: {v or 'no summary line (see the log)'}" for k, v in R["sanitize"].items())]
bt = logs / "bench_train.log"
if bt.exists():
    R["bench_train"] = bt.read_text().splitlines()[-15:]
(outdir / "results.json").write_text(json.dumps(R, indent=1, default=str))
(outdir / "results.md").write_text("\n".join(L) + "\n")
print("\n".join(L))
PY
"$PY" "$WORK/report.py" > "$WORK/report.log" 2>&1 || { echo "report failed:"; tail -n 20 "$WORK/report.log"; }
tar -czf "$OUTDIR/logs.tar.gz" -C "$LOGS" . 2>/dev/null
cat "$OUTDIR/results.md" 2>/dev/null
echo "total $(( $(date +%s) - START ))s; results in $OUTDIR (results.md, results.json, logs.tar.gz)"
failed=$(cut -f2 "$LOGS/stages.tsv" | grep -c -E "^(FAIL|TIMEOUT)")
rm -rf "$WORK"
exit $(( failed > 0 ))
