"""Where the time goes: an op-level profiler, phase timers, a GEMM peak probe, a token timer.

    with minigrad.profile() as prof:
        loss = model(x, y)[1]
        loss.backward()
        with prof.region("optimizer"):      # work that is not an op
            opt.step()
    print(prof.table(top=15))
    prof.export_chrome_trace("trace.json")   # open in https://ui.perfetto.dev or chrome://tracing

    hook.py     ``profile``: the hook the engine calls around each op, and the table it prints
    flops.py    ``estimate``: FLOPs and bytes per call, a table keyed by the op's class name
    timers.py   ``PhaseTimer`` (training phases), ``matmul_peak``, ``TokenTimer`` (generation)
"""
from .flops import estimate
from .hook import hook_overhead, profile
from .timers import PhaseTimer, TokenTimer, matmul_peak

__all__ = ["PhaseTimer", "TokenTimer", "estimate", "hook_overhead", "matmul_peak", "profile"]
