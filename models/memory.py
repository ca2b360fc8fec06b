"""Will it fit? The memory a model needs, worked out from its config before anything is allocated,
against what this machine has: a request that cannot fit is refused in one line, instead of dying
in an allocator (C++'s std::bad_alloc, NumPy's MemoryError) or at the out-of-memory killer's hands.

The figures are lower bounds: they count only float32 arrays that certainly exist at one time.
  training a GPT   the parameters, their gradients and AdamW's two moments (16 bytes a parameter),
                   one more gradient buffer per extra data-parallel worker; and in the process that
                   computes one slice of the batch (B // workers rows of T tokens), at the start of
                   its backward: the activations the blocks keep (12·n_embd a token and layer: the
                   two LayerNorm inputs and outputs, q|k|v, the attention output, the GELU output),
                   the logits and their gradient (2·V a token), and the native attention's two T×T
                   score buffers (P and dS) for one (batch, head) pair
  training seq2seq the parameter state as above
  generating       the weights and the GPT's KV cache (2·n_layer·block_size·n_embd)
A request is refused only when even that exceeds what is available: MemAvailable plus free swap,
or the cgroup's limit less its usage where that is smaller. Only the standard library is imported.
"""
from __future__ import annotations

from pathlib import Path

FLOAT = 4   # bytes: every model array is float32


class ModelTooLargeError(RuntimeError):
    """The model would not fit in memory; the message is one line with both figures."""


def gpt_params(cfg) -> int:
    """The GPT's parameter count (models/gpt.py), from its config alone."""
    C, L, b = cfg.n_embd, cfg.n_layer, int(bool(cfg.bias))
    block = 12 * C * C + 2 * C + b * 11 * C     # ln_1, c_attn, c_proj, ln_2, c_fc, mlp c_proj
    return cfg.vocab_size * C + cfg.block_size * C + L * block + C + b * C


def seq2seq_params(cfg) -> int:
    """The encoder-decoder's parameter count (models/seq2seq.py), from its config alone."""
    C, L, b = cfg.n_embd, cfg.n_layer, int(bool(cfg.bias))
    attn = 4 * C * C + b * 4 * C                 # q_proj, kv_proj (fused), out_proj
    mlp = 8 * C * C + b * 5 * C
    encoder = 2 * 2 * C + attn + mlp             # two LayerNorms (always with bias)
    decoder = 3 * 2 * C + 2 * attn + mlp
    return cfg.vocab_size * C + 2 * cfg.max_len * C + L * (encoder + decoder) + 2 * 2 * C


def training_state_bytes(n_params: int, workers: int = 1) -> int:
    """Weights, gradients, AdamW's moments, and each extra worker's gradient buffer."""
    return FLOAT * n_params * (4 + max(workers, 1) - 1)


def gpt_train_bytes(cfg, batch_size: int, workers: int = 1) -> tuple[int, str]:
    """(lower bound in bytes, what dominates it) for a training step of the GPT."""
    T, C, L, V = cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.vocab_size
    rows = max(batch_size // max(workers, 1), 1)
    parts = {
        "parameters, gradients and AdamW moments": training_state_bytes(gpt_params(cfg), workers),
        "activations kept for the backward": FLOAT * rows * T * L * 12 * C,
        "logits and their gradient": FLOAT * rows * T * 2 * V,
        f"attention scores ({T}x{T}, twice)": FLOAT * 2 * T * T,
    }
    return sum(parts.values()), max(parts, key=parts.get)


def gpt_generate_bytes(cfg) -> tuple[int, str]:
    """(lower bound in bytes, what dominates it) for sampling from the GPT with its KV cache."""
    parts = {"weights": FLOAT * gpt_params(cfg),
             f"KV cache ({cfg.n_layer} layers x {cfg.block_size} positions)":
                 FLOAT * 2 * cfg.n_layer * cfg.block_size * cfg.n_embd}
    return sum(parts.values()), max(parts, key=parts.get)


def available_bytes() -> int | None:
    """What this process could still allocate: MemAvailable + SwapFree (Linux), capped by the
    cgroup's limit less its usage; None where neither can be read."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields = value.split()
            if fields and fields[0].isdigit():
                info[key] = int(fields[0]) * 1024
    except OSError:
        pass
    avail = info["MemAvailable"] + info.get("SwapFree", 0) if "MemAvailable" in info else None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = (Path(f).read_text().strip() for f in (limit_file, usage_file))
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:
            room = max(int(limit) - int(usage), 0)
            avail = room if avail is None else min(avail, room)
        break
    return avail


def human(n: float) -> str:
    """Bytes in the nearest unit: 1.5 GB, 320 TB (powers of 1000)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"


def check_fits(needed: int, what: str, dominant: str, hint: str, available: int | None = None) -> None:
    """Raise ModelTooLargeError when `needed` bytes (a lower bound for `what`) exceed what is available."""
    available = available_bytes() if available is None else available
    if available is None or needed <= available:
        return
    raise ModelTooLargeError(f"{what} needs at least {human(needed)} of memory (mostly {dominant}), but "
                       f"{human(available)} is available; {hint}")
