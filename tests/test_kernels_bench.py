"""The GPU benches' harness (kernels/bench.py, kernels/attention_bench.py) on the CPU: a stand-in
for CuPy built on NumPy (arrays are NumPy, so the kernels run on the emulator; events read the
host clock; a CUDA graph is either refused or replays nothing) drives the same code the GPU runs:
rotation over input sets, graph capture with its fallback, the poisoned-output check, peak figures
from device attributes, the rows and the JSON. Times here mean nothing and are not asserted."""
import json
import time
import types

import numpy as np
import pytest

from minigrad.kernels import attention as A
from minigrad.kernels import attention_bench as AB
from minigrad.kernels import bench as B
from minigrad.kernels import layernorm as LN

H200_ATTRS = {13: 1980000, 16: 132, 36: 3201000, 37: 6144, 38: 60 * 2 ** 20, 75: 9, 76: 0, 97: 232448}


class _Event:
    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Stream:
    capture_ok = True

    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        if not _Stream.capture_ok:
            raise RuntimeError("operation not permitted when stream is capturing")

    def end_capture(self):
        return types.SimpleNamespace(upload=lambda stream=None: None, launch=lambda stream=None: None)

    def synchronize(self):
        pass


class _Pool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


def fake_cupy(attrs=H200_ATTRS):
    """A module with the CuPy names the benches use, over NumPy."""
    class Fake(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    cp = Fake("fake_cupy")
    runtime = types.SimpleNamespace(
        deviceGetAttribute=lambda code, dev: attrs[code] if code in attrs else (_ for _ in ()).throw(
            RuntimeError("cudaErrorInvalidValue")),
        getDeviceProperties=lambda dev: {"name": b"Fake H200"})
    cp.cuda = types.SimpleNamespace(
        Device=lambda: types.SimpleNamespace(id=0, synchronize=lambda: None), Event=_Event, Stream=_Stream,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3, runtime=runtime,
        memory=types.SimpleNamespace(OutOfMemoryError=MemoryError))
    cp.random = types.SimpleNamespace(default_rng=np.random.default_rng)
    cp.get_default_memory_pool = _Pool
    return cp


def test_peaks_come_from_device_attributes():
    cp = fake_cupy()
    info = B.device_info(cp)
    assert info["name"] == "Fake H200" and info["sms"] == 132 and info["l2_bytes"] == 60 * 2 ** 20
    assert info["peak_float32"] == pytest.approx(2 * 128 * 132 * 1.98e9)
    assert info["peak_float64"] == pytest.approx(2 * 64 * 132 * 1.98e9)
    assert info["spec_bw"] == pytest.approx(2 * 3.201e9 * 6144 / 8)
    partial = B.device_info(fake_cupy({16: 132, 75: 9, 76: 0}))        # no clock attribute: no peak
    assert partial["peak_float32"] is None and partial["spec_bw"] is None and partial["clock_khz"] is None


def test_input_sets_span_three_times_l2():
    assert B.n_sets(10 << 20, 60 << 20) == 8           # 180 MiB / 10 MiB, capped at MAX_SETS
    assert B.n_sets(50 << 20, 60 << 20) == 4
    assert B.n_sets(1 << 30, 60 << 20) == 1 and B.n_sets(123, None) == 1
    set_bytes = 4 * (2 * 8 * 64 + 2 * 64)               # x, dy (8, 64) and weight, bias (64,) in float32
    sets = B.input_sets(fake_cupy(), LN._inputs, (8, 64, True), np.float32, set_bytes)
    assert len(sets) == 3                               # 3 x L2 when L2 is one set
    assert all(s["x"].dtype == np.float32 and s["x"].shape == (8, 64) for s in sets)
    assert not any(np.array_equal(sets[0]["x"], s["x"]) for s in sets[1:])   # fresh values per set
    assert all(np.abs(s["x"]).max() > 0 for s in sets)


@pytest.mark.parametrize("capture_ok", [True, False])
def test_time_calls_captures_a_graph_or_falls_back_to_events(monkeypatch, capture_ok):
    monkeypatch.setattr(_Stream, "capture_ok", capture_ok)
    calls = []
    t = B.time_calls(fake_cupy(), [lambda k=k: calls.append(k) for k in range(3)], warmup=1, repeat=4)
    assert t["method"] == ("graph" if capture_ok else "events") and t["s"] >= 0 and t["host_s"] > 0
    assert calls[:3] == [0, 1, 2] and len(calls) % 3 == 0   # round-robin over the sets, whole rounds


def test_checked_run_fails_an_output_the_kernel_never_wrote():
    cp = fake_cupy()
    i = LN._inputs(np, np.random.default_rng(0), (5, 40, True), np.dtype(np.float32))
    good = B.checked_run(cp, LN.FORWARD, lambda x: LN._fwd_ref(x), i, np.float32)
    assert good["ok"] and good["rel"] < 1e-6

    def half_written(x):
        out = LN._fwd_ref(x)
        out["y"][2:] = np.nan                      # rows 2.. left as the poison
        return out
    bad = B.checked_run(cp, LN.FORWARD, half_written, i, np.float32)
    assert not bad["ok"] and bad["rel"] == float("inf")


def test_layernorm_bench_rows_on_the_emulator(tmp_path):
    cp = fake_cupy()
    lines = []
    rows = B.run(cp, names=["layernorm_forward"], dtypes=(np.float32,), warmup=1, repeat=2, out=lines.append,
                 info=B.device_info(cp), copy_bw=1e12, cases=[(6, 40, True)])
    assert len(rows) == 1 and len(lines) == 2
    r = rows[0]
    assert r["kernel"] == "layernorm_forward" and r["check_ok"] and r["bytes"] == LN._fwd_bytes((6, 40, True), np.float32)
    assert r["fused_GBs"] > 0 and r["unfused_s"] > 0 and r["torch_s"] is None and r["method"] in ("graph", "events")
    json.dumps(rows)                                # the rows go to gpu_check's JSON as they are


def test_attention_bench_rows_on_the_emulator():
    cp = fake_cupy()
    lines = []
    rows = AB.run(cp, [(1, 2, 9, 12, 16, True, True)], np.float64, warmup=1, repeat=2, out=lines.append,
                  info=B.device_info(cp))
    assert [r["pass_"] for r in rows] == ["fwd", "fwd+bwd"] and all(r["check_ok"] for r in rows)
    assert all(r["pct_peak"] is not None and r["tflops"] > 0 and r["dtype"] == "float64" for r in rows)
    assert not A.ALLOCATIONS
    json.dumps(rows)


def test_benches_without_a_gpu_say_so_and_succeed():
    from minigrad.kernels.validate import gpu_available
    if gpu_available():
        pytest.skip("a GPU is present: the no-GPU message does not apply")
    lines = []
    assert B.bench(out=lines.append) == 0 and AB.main(out=lines.append) == 0
    assert all("no GPU" in s and "unmeasured" in s for s in lines)
