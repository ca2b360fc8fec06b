"""The op-level profiler: coverage of a training step's wall time, rows per (op, phase), nested
backward ops counted once, FLOP estimates, the Chrome trace, the phase and token timers."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

import minigrad
from minigrad import autograd
from minigrad.profiler import PhaseTimer, TokenTimer, estimate, hook_overhead, matmul_peak, profile


def _rows(prof):
    return {(r["name"], r["phase"]): r for r in prof.key_averages()}


def _gpt_step_parts():
    from minigrad import optim
    from minigrad.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(), seed=0)          # the default config: 4 layers, 4 heads, n_embd 128, block 64
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def batch():
        x = rng.integers(0, 84, (12, 64))     # the default batch of 12
        return x, np.roll(x, -1, axis=1)
    return model, opt, batch


def test_op_times_cover_a_training_step():
    """Forward + backward: op times >= 90% of the profiled wall time. The whole step (the
    optimizer as a region, since it is not an op): ops + regions >= 90% as well.

    The machine is shared: another process can take the CPU between two ops, which no profiler
    can attribute. So each claim is checked on the best of three steps; a systematic gap (an op,
    or engine work, that the profiler does not see) fails all three."""
    model, opt, batch = _gpt_step_parts()
    for _ in range(2):                       # warm-up: first-touch allocations, BLAS thread start
        x, y = batch()
        model(x, y)[1].backward()
        opt.step()
        opt.zero_grad()

    def fwd_bwd():
        x, y = batch()
        with profile() as prof:
            model(x, y)[1].backward()
        opt.zero_grad()
        return prof

    def whole_step():
        x, y = batch()
        with profile() as prof:
            model(x, y)[1].backward()
            with prof.region("optimizer"):
                minigrad.optim.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad()
        return prof

    for run, covered in ((fwd_bwd, lambda p: p.op_time), (whole_step, lambda p: p.total_time)):
        tries = []
        for _ in range(3):
            prof = run()
            tries.append(covered(prof) / prof.wall_time)
            assert prof.total_time <= prof.wall_time * (1 + 1e-9)      # nothing counted twice
            if tries[-1] >= 0.90:
                break
        assert max(tries) >= 0.90, f"{run.__name__}: coverage {tries}\n{prof.table(top=10)}"
    rows = _rows(prof)
    assert ("optimizer", "region") in rows and ("Linear", "forward") in rows and ("Linear", "backward") in rows
    assert ("AccumulateGrad", "backward") in rows
    assert abs(sum(r["share"] for r in rows.values()) - 1.0) < 1e-9


def test_matmul_rows_count_exact_flops_and_fold_nested_ops():
    rng = np.random.default_rng(1)
    a = minigrad.Tensor(rng.standard_normal((3, 5, 7)).astype(np.float32), requires_grad=True)
    b = minigrad.Tensor(rng.standard_normal((7, 4)).astype(np.float32), requires_grad=True)
    with profile() as prof:
        (a @ b).sum().backward()
    rows = _rows(prof)
    mm_f, mm_b = rows[("MatMul", "forward")], rows[("MatMul", "backward")]
    one = 2 * 3 * 5 * 4 * 7
    assert mm_f["calls"] == 1 and mm_f["flops"] == one
    assert mm_f["bytes"] == (3 * 5 * 7 + 7 * 4 + 3 * 5 * 4) * 4
    assert mm_b["calls"] == 1 and mm_b["flops"] == 2 * one       # both inputs need a gradient
    # MatMul's backward runs matmuls (and swapaxes, sums) itself: they are folded into its row,
    # not counted again as forward rows, but they are kept as nested events
    nested = [e for e in prof.events if not e.top]
    assert any(e.name == "MatMul" and e.phase == "forward" for e in nested)
    parent = next(e for e in prof.events if e.name == "MatMul" and e.phase == "backward")
    for e in nested:
        if parent.t0 <= e.t0 <= parent.t1:
            assert e.t1 <= parent.t1
    top_sum = sum(e.t1 - e.t0 for e in prof.events if e.top)
    assert abs(prof.op_time - top_sum) < 1e-9
    assert prof.op_time <= prof.wall_time


def test_backward_flops_follow_which_inputs_need_grad():
    rng = np.random.default_rng(2)
    a = minigrad.Tensor(rng.standard_normal((6, 8)).astype(np.float32), requires_grad=True)
    w = minigrad.Tensor(rng.standard_normal((8, 3)).astype(np.float32))      # a constant
    with profile() as prof:
        (a @ w).sum().backward()
    rows = _rows(prof)
    assert rows[("MatMul", "backward")]["flops"] == rows[("MatMul", "forward")]["flops"] == 2 * 6 * 3 * 8


def test_attention_flops_grow_quadratically_and_layernorm_reads_its_input():
    def attn_flops(t):
        q = minigrad.Tensor(np.ones((1, 2, t, 8), np.float32))
        with profile() as prof:
            minigrad.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return _rows(prof)[("Attention", "forward")]["flops"]
    assert attn_flops(32) == 4 * attn_flops(16)
    f, _ = estimate("Attention", "forward", [(2, 3, 10, 8), (2, 3, 12, 8), (2, 3, 12, 8)], (2, 3, 10, 8), 4)
    assert f == 2 * 6 * 10 * 12 * 16 + 5 * 6 * 10 * 12
    x = minigrad.Tensor(np.ones((10, 16), np.float32), requires_grad=True)
    ln = minigrad.nn.LayerNorm(16)
    with profile() as prof:
        ln(x).sum().backward()
    r = _rows(prof)[("LayerNorm", "forward")]
    assert r["bytes"] >= 2 * x.data.nbytes and r["flops"] > 0


def test_table_lists_forward_and_backward_rows_and_the_overhead():
    x = minigrad.Tensor(np.linspace(-1, 1, 50, dtype=np.float32), requires_grad=True)
    with profile() as prof:
        (x.exp() * x).sum().backward()
    text = prof.table()
    for needle in ("Exp", "Mul", "forward", "backward", "wall", "profiler overhead"):
        assert needle in text
    assert "more rows" in prof.table(sort_by="name", top=1)
    with pytest.raises(ValueError, match="sort_by"):
        prof.table(sort_by="speed")
    with pytest.raises(ValueError, match="top"):
        prof.table(top=0)
    per_op = hook_overhead()
    assert 0 <= per_op < 1e-3          # a few µs on any machine; a millisecond would be a bug


def test_chrome_trace_is_complete_events_with_shapes(tmp_path):
    a = minigrad.Tensor(np.ones((4, 3), np.float32), requires_grad=True)
    with profile() as prof:
        (a @ a.T).tanh().sum().backward()
    path = prof.export_chrome_trace(tmp_path / "trace.json")
    with open(path) as f:
        trace = json.load(f)
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(prof.events)
    for e in events:
        assert {"name", "ts", "dur", "pid", "tid", "args"} <= set(e)
        assert e["dur"] >= 0 and e["ts"] >= 0
    mm = next(e for e in events if e["name"] == "MatMul forward")
    assert mm["args"]["input_shapes"] == [[4, 3], [3, 4]] and mm["args"]["output_shape"] == [4, 4]
    assert mm["args"]["flops"] == 2 * 4 * 4 * 3
    # nested slices lie inside their parent, as the trace viewers require
    by_ts = sorted(events, key=lambda e: (e["ts"], -e["dur"]))
    stack = []
    for e in by_ts:
        while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"] - 1e-3:
            stack.pop()
        if stack:
            assert e["ts"] + e["dur"] <= stack[-1]["ts"] + stack[-1]["dur"] + 2e-3
        stack.append(e)


def test_profiler_detaches_even_on_error_and_does_not_nest():
    with pytest.raises(ZeroDivisionError), profile():
        raise ZeroDivisionError
    assert autograd._profiler is None
    with profile(), pytest.raises(RuntimeError, match="already active"), profile():
        pass
    assert autograd._profiler is None
    p = profile()
    with pytest.raises(RuntimeError, match="with"):
        p.table()


def test_phase_timer_sums_phases_and_profiles_one_step():
    timer = PhaseTimer(profile_step=2)
    x = minigrad.Tensor(np.ones((8, 8), np.float32), requires_grad=True)
    for _ in range(3):
        with timer.phase("data"):
            time.sleep(0.002)
        with timer.phase("forward"):
            y = (x @ x).sum()
        with timer.phase("backward"):
            y.backward()
        with timer.phase("optimizer"):
            time.sleep(0.001)
    with timer.phase("eval"):
        pass
    assert len(timer.steps) == 2                       # step 2 was profiled and left out
    assert timer.counts["data"] == 2 and timer.totals["data"] >= 2 * 0.002
    assert timer.op_profile is not None
    rows = _rows(timer.op_profile)
    assert rows[("MatMul", "forward")]["calls"] == 1 and ("data", "region") in rows
    report = timer.report(tokens_per_step=64, peak_flops=1e10, peak_note="(test)")
    for needle in ("data", "forward", "backward", "optimizer", "eval", "tokens/s", "GFLOP/s", "% of the matmul peak"):
        assert needle in report


def test_matmul_peak_probe():
    flops, note = matmul_peak(n=128, reps=2)
    assert np.isfinite(flops) and flops > 1e6 and "128x128" in note


def test_token_timer_splits_prefill_decode_and_window_refills():
    timer = TokenTimer(prompt_tokens=5, window=8, cached=True)
    for _ in range(6):
        timer()
    text = timer.report()
    # token 1 comes from the prefill of 5; tokens 2..4 are decoded from contexts of 6..8 tokens,
    # which fit the window of 8; tokens 5..6 see 9..10 tokens, so the cache is refilled
    assert "prefill" in text and "5-token prompt" in text
    assert "decode: 3 tokens" in text and "decode past the window (cache refilled): 2 tokens" in text


def test_gpu_times_come_from_cuda_events():
    cupy = pytest.importorskip("cupy", reason="no GPU: CuPy is not installed")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:   # noqa: BLE001  (a CUDA runtime error means: no device)
        n = 0
    if n == 0:
        pytest.skip("no GPU: cupy cannot see a device")
    a = minigrad.Tensor(np.ones((256, 256), np.float32), device="cuda", requires_grad=True)
    with profile() as prof:
        (a @ a).sum().backward()
    assert prof.use_cuda and prof.op_time > 0 and prof.op_time <= prof.wall_time * 1.01


def test_engine_gradient_sums_are_recorded_as_accumulate_grad():
    x = minigrad.Tensor(np.ones((5, 6), np.float32), requires_grad=True)
    with profile() as prof:
        (x.exp() + x.tanh()).sum().backward()      # x feeds two ops: its two gradients are summed
    acc = [e for e in prof.events if e.name == "AccumulateGrad"]
    sums = [e for e in acc if e.shapes]                 # the sum; the other is the final .grad write
    assert len(sums) == 1 and len(acc) == 2 and all(e.top for e in acc)
    assert estimate("AccumulateGrad", "backward", sums[0].shapes, sums[0].out_shape, 4)[0] == 30


def test_phase_timer_detaches_the_profiler_when_a_step_fails():
    timer = PhaseTimer(profile_step=1)
    with pytest.raises(KeyboardInterrupt), timer.phase("data"):
        assert autograd._profiler is not None
        raise KeyboardInterrupt
    assert autograd._profiler is None


def test_linear_flops_are_estimated_as_gemms():
    # y = x Wᵀ + b over 24 rows: 2·24·8·5 multiply-adds plus the bias; backward: two GEMMs + Σ g
    f, _ = estimate("Linear", "forward", [(4, 6, 8), (5, 8), (5,)], (4, 6, 5), 4)
    assert f == 2 * 24 * 8 * 5 + 24 * 5
    fb, _ = estimate("Linear", "backward", [(4, 6, 8), (5, 8), (5,)], (4, 6, 5), 4)
    assert fb == 2 * (2 * 24 * 8 * 5) + 24 * 5


def test_flop_table_keys_are_the_op_class_names_the_engine_records():
    """The table is keyed by ``type(fn).__name__``: a key that names no op (a renamed class) would
    silently leave that op without an estimate."""
    import minigrad.nn.functional  # noqa: F401  (imports every op module)
    from minigrad.autograd import Function
    from minigrad.profiler.flops import ESTIMATES

    def subclasses(cls):
        for s in cls.__subclasses__():
            yield s
            yield from subclasses(s)

    ops = {c.__name__ for c in subclasses(Function)}
    assert set(ESTIMATES) <= ops, f"FLOP table keys that name no op: {sorted(set(ESTIMATES) - ops)}"
    for name in ("MatMul", "Linear", "LayerNorm", "Attention", "QKVAttention", "GeluMLP", "CrossEntropy"):
        assert name in ESTIMATES
    assert estimate("Reshape", "forward", [(2, 3)], (6,), 4) == (None, None)   # views: no estimate
