"""Weight-only quantization for inference: int8 (symmetric, per output channel or per group) and bfloat16.

    quantize_(model, "int8", group_size=None)   # every Linear, and a GPT's tied head, in place
    save_quantized(model, "model-int8.safetensors")
    load_quantized(fresh_float_model, "model-int8.safetensors")   # same structure, same arrays

W (N, K) as nn.Linear keeps it (out, in). Schemes:
  int8       q = rint(W / s) in [-127, 127] (int8), s = max|W| / 127 (float32) per output row, or per
             row and group of `group_size` inputs: s (N, G), G = ceil(K / group_size); W ≈ q · s and
             |W − q · s| <= s / 2 element by element.
  bfloat16   W rounded to nearest-even bfloat16 (ml_dtypes), read back exactly as float32.
  float32    (or "bf16" for bfloat16) accepted by quantize_ as a no-op / alias, for --weights flags.
Activations stay float32 at the interface, and the math is float32 (kernels/cpu/quant_gemm.cpp on
the CPU: each weight byte read once, converted, fused multiply-add; from PREFILL_ROWS rows of x on,
dequantized blocks of W and BLAS sgemm). On a CPU with AVX-512 VNNI, int8 GEMVs (fewer than
PREFILL_ROWS rows) run q8x24 instead: each row of x is rounded to 24-bit fixed point on its own range
(an error of at most max|x| · 2^-24 per entry, against float32's |x| · 2^-24) and the dot products are
exact integer sums, in a quarter of the instructions; MINIGRAD_QUANT_ISA=avx512 keeps the FMAs.
With ``activations="int8"`` (int8 only), x is also quantized per row on the fly and the dot
products are exact int32 sums (AVX-512 VNNI): faster at every size measured, less accurate (default
Shakespeare model: val_loss +2.5e-4 against +1.0e-4).

A QuantizedLinear holds buffers, not Parameters: ``weight`` (int8 or bfloat16), ``weight_scale``
(int8 only) and ``bias`` (float32, if any); its matmul refuses backward, and its weight refuses
requires_grad: this is inference. A model with a tied head (``lm_head`` None and an embedding
``wte``, as minigrad.models.gpt.GPT) gets ``lm_head = QuantizedLinear`` of ``wte.weight``; the
embedding lookup itself stays float32.

Files are safetensors (never pickle): each buffer under its state_dict name, int8 as I8, bfloat16 as
BF16, scales as F32 beside their weight ("<name>.weight_scale"), and metadata
{"format": "minigrad-quantized", "scheme", "group_size", "activations"} plus the caller's own strings.

Switches (read on every call): MINIGRAD_QUANT_ISA=auto (default) | portable | avx512 picks the native
path (portable: the plain C++ loops, used by the tests; avx512: int8 on the float32 FMAs, not q8x24);
MINIGRAD_QUANT_THREADS=N threads for the native matmuls (default: the CPUs this process may run on);
MINIGRAD_CPU_NATIVE=0 or MINIGRAD_IMPL=reference: the NumPy reference (dequantize, then matmul).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .. import dispatch, hugepages
from ..autograd import Function
from ..backend import bfloat16, get_array_module, to_host
from ..files import write_atomic
from ..tensor import Tensor
from .layers import Linear
from .module import Module

SCHEMES = ("int8", "bfloat16")
ACTIVATIONS = ("float32", "int8")
FORMAT = "minigrad-quantized"
_ISAS = ("auto", "portable", "avx512")
_INFERENCE_ONLY = ("quantized weights are for inference only: backward is not supported "
                   "(train in float32, then quantize_)")


class QuantizedWeight(Tensor):
    """A quantized weight (int8 or bfloat16 array): never requires grad."""
    __slots__ = ()

    def requires_grad_(self, on=True):
        if on:
            raise RuntimeError(f"QuantizedWeight: {_INFERENCE_ONLY}")
        return self


# ---------------------------------------------------------------- quantize / dequantize arrays
def _check_group(k: int, group_size):
    if group_size is None:
        return k
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"quantize: group_size must be a positive int or None, got {group_size!r}")
    return min(int(group_size), k)


def quantize_int8(w, group_size=None):
    """w (N, K) float -> (q int8 (N, K), scale float32 (N, G)), G = ceil(K / group_size) (1 if None)."""
    xp = get_array_module(w)
    if w.ndim != 2:
        raise ValueError(f"quantize_int8: weight must be 2-D (out, in), got shape {w.shape}")
    n, k = w.shape
    g = _check_group(k, group_size)
    ng = -(-k // g) if k else 1
    w64 = xp.zeros((n, ng * g), np.float64)
    w64[:, :k] = w
    w64 = w64.reshape(n, ng, g)                                        # (N, G, group), zero-padded
    scale = (xp.abs(w64).max(axis=2) / 127.0).astype(np.float32)       # (N, G)
    s64 = scale.astype(np.float64)[:, :, None]
    q = xp.rint(xp.divide(w64, s64, out=xp.zeros_like(w64), where=s64 > 0))
    q = xp.clip(q, -127, 127).astype(np.int8).reshape(n, ng * g)[:, :k]
    return xp.ascontiguousarray(q), scale


def quantize_bf16(w):
    """w float -> bfloat16 (round to nearest even)."""
    return w.astype(bfloat16())


def dequantize(weight, scale=None, group_size=None):
    """The float32 weight a quantized one stands for: q · scale (int8), or bfloat16 -> float32 (exact)."""
    weight = weight.data if isinstance(weight, Tensor) else weight
    if weight.dtype == bfloat16():
        return weight.astype(np.float32)
    if weight.dtype != np.int8 or scale is None:
        raise TypeError(f"dequantize: expected int8 with scales or bfloat16, got {weight.dtype}"
                        f"{' without scales' if scale is None else ''}")
    scale = scale.data if isinstance(scale, Tensor) else scale
    xp = get_array_module(weight)
    n, k = weight.shape
    g = _check_group(k, group_size)
    if scale.shape != (n, -(-k // g) if k else 1):
        raise ValueError(f"dequantize: scale of shape {scale.shape} does not fit weight {weight.shape} "
                         f"with group_size {group_size}")
    return weight.astype(np.float32) * xp.repeat(scale, g, axis=1)[:, :k]


# ---------------------------------------------------------------- the op
_CPUS = []


def _threads() -> int:
    v = os.environ.get("MINIGRAD_QUANT_THREADS", "").strip()
    if v:
        try:
            return max(1, int(v))
        except ValueError:
            raise ValueError(f"MINIGRAD_QUANT_THREADS must be a positive integer, got {v!r}") from None
    if not _CPUS:     # the CPUs this process may run on, asked once (a system call per GEMV adds up)
        _CPUS.append(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return _CPUS[0]


def native_isa(lib, kind: str) -> int:
    """The quant_gemm.cpp path for `kind` ("int8", "bfloat16", "int8a8", or "float32": the decode
    step's GEMVs and attention) under MINIGRAD_QUANT_ISA: 0 portable, 1 AVX-512 float32 FMAs, 2 VNNI (int8a8; and int8 under "auto": q8x24, x in 24-bit
    fixed point, where the CPU has VNNI; "avx512" keeps int8 on the float32 FMAs)."""
    want = os.environ.get("MINIGRAD_QUANT_ISA", "auto").strip().lower() or "auto"
    if want not in _ISAS:
        raise ValueError(f"MINIGRAD_QUANT_ISA must be one of {', '.join(_ISAS)}, got {want!r}")
    has = lib.quant_isa
    if want == "portable" or not has & 1:
        if want == "avx512":
            raise RuntimeError("MINIGRAD_QUANT_ISA=avx512, but this CPU or build has no AVX-512")
        return 0
    if kind == "int8a8":
        return 2 if has & 2 else 0
    if kind == "int8" and want == "auto" and has & 2:
        return 2
    return 1


def int8_isa(lib, group) -> int:
    """The int8 GEMV (float32 activations) for groups of `group` inputs: 2 q8x24 (VNNI, where its
    int32 sums are exact), 1 the AVX-512 FMAs (q8), 0 the portable loops."""
    isa = native_isa(lib, "int8")
    return isa if isa < 2 or exact_int32_sums(group) else 1


class QuantizedMatmul(Function):
    """y = x Wᵀ + b with W stored quantized: x (…, K) float, W (N, K) int8 with scale (N, G) or
    bfloat16, b (N,) or None -> y (…, N) in x's dtype. Reference: dequantize W to float32, then one
    GEMM. act_int8 (int8 only): x is quantized per row first (as the VNNI kernel does). Inference
    only: backward raises."""

    def forward(self, x, *, weight, scale=None, bias=None, group=None, act_int8=False, wsum=None):
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        if act_int8:
            xq, xs = quantize_rows(x2)
            y = (xq.astype(np.float32) @ dequantize(weight, scale, group).T) * xs[:, None]
        else:
            y = x2 @ dequantize(weight, scale, group).astype(x.dtype).T
        if bias is not None:
            y += bias
        return y.astype(x.dtype, copy=False).reshape(x.shape[:-1] + (weight.shape[0],))

    def backward(self, g):
        raise RuntimeError(f"QuantizedLinear: {_INFERENCE_ONLY}")


PREFILL_ROWS = 128     # from this many rows of x on, blocks of W dequantized + BLAS sgemm (measured below)


@QuantizedMatmul.variant("native")
class QuantizedMatmulNative(QuantizedMatmul):
    """kernels/cpu/quant_gemm.cpp: float32 x, int8 or bfloat16 W read once per call. With many rows
    (prefill) the GEMM is compute-bound and BLAS's sgemm is the faster engine: W is dequantized in
    blocks of ~1 MB of float32 rows and multiplied there. One thread, 768x3072: the kernel took 3.9 ms
    against 4.8 blocked at 64 rows, 32 against 20 at 512 (sgemm on float32 weights: 3.2 and 16.6)."""

    @staticmethod
    def takes(x, *, weight, scale=None, bias=None, group=None, act_int8=False, wsum=None):
        return (x.dtype == np.float32 and type(weight) is np.ndarray and x.ndim >= 1
                and dispatch.cpu_native(x) is not None)

    def forward(self, x, *, weight, scale=None, bias=None, group=None, act_int8=False, wsum=None):
        lib = dispatch.cpu_native(x)
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        nt = _threads()
        if x2.shape[0] >= PREFILL_ROWS and not act_int8:
            y = _blocked_matmul(x2, weight, scale, bias, group)
        elif weight.dtype == np.int8:
            if act_int8:
                wsum = wsum_int8(weight, group) if wsum is None else wsum
                y = lib.q8a8_matmul(x2, weight, scale, wsum, bias, group, native_isa(lib, "int8a8"), nt)
            elif int8_isa(lib, group) == 2:
                wsum = wsum_int8(weight, group) if wsum is None else wsum
                y = lib.q8x24_matmul(x2, weight, scale, wsum, bias, group, 2, nt)
            else:
                y = lib.q8_matmul(x2, weight, scale, bias, group, int8_isa(lib, group), nt)
        else:
            y = lib.bf16_matmul(x2, weight.view(np.uint16), bias, native_isa(lib, "bfloat16"), nt)
        return y.reshape(x.shape[:-1] + (weight.shape[0],))


def _blocked_matmul(x2, weight, scale, bias, group):
    """x2 (M, K) float32 @ dequant(W)ᵀ (+ b) as sgemms over blocks of W's rows: (M, N) float32."""
    m, k = x2.shape
    n = weight.shape[0]
    y = np.empty((m, n), np.float32)
    rows = max(64, (1 << 18) // max(k, 1))
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        wf = dequantize(weight[n0:n1], None if scale is None else scale[n0:n1], group)
        np.matmul(x2, wf.T, out=y[:, n0:n1])
    if bias is not None:
        y += bias
    return y


def exact_int32_sums(group) -> bool:
    """Whether the VNNI kernels' int32 sums over a group of `group` inputs are exact: each term is at
    most 255 · 127 (an unsigned byte of x times an int8 weight)."""
    return group * 255 * 127 < 2 ** 31


def wsum_int8(q, group):
    """Σ_k q[n, k] per row and group of `group` inputs: int32 (N, G), the VNNI kernel's offset term."""
    n, k = q.shape
    ng = -(-k // group) if k else 1
    pad = np.zeros((n, ng * group), np.int32)
    pad[:, :k] = to_host(q)
    return np.ascontiguousarray(pad.reshape(n, ng, group).sum(axis=2, dtype=np.int32))


def quantize_rows(x2):
    """x2 (M, K) float32 -> (xq int8 (M, K), xs float32 (M,)): xs = max|x| / 127, xq = rint(x · 127 / max|x|),
    the same float32 operations as quant_gemm.cpp's quantize_row."""
    xp = get_array_module(x2)
    x2 = x2.astype(np.float32, copy=False)
    amax = xp.abs(x2).max(axis=1) if x2.shape[1] else xp.zeros(x2.shape[0], np.float32)
    xs = amax / np.float32(127)
    inv = xp.where(amax > 0, np.float32(127) / xp.where(amax > 0, amax, np.float32(1)), np.float32(0))
    xq = xp.clip(xp.rint(x2 * inv[:, None]), -127, 127).astype(np.int8)
    return xq, xs.astype(np.float32)


# ---------------------------------------------------------------- the module
class QuantizedLinear(Module):
    """y = x Wᵀ + b with W (out, in) int8 (+ weight_scale) or bfloat16; inference only."""

    def __init__(self, in_features, out_features, scheme="int8", group_size=None, bias=False, activations="float32"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"quantize: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if activations not in ACTIVATIONS or (activations == "int8" and scheme != "int8"):
            raise ValueError(f"quantize: activations must be 'float32' (or 'int8' with the int8 scheme), "
                             f"got {activations!r} with {scheme!r}")
        self.in_features, self.out_features, self.scheme, self.activations = in_features, out_features, scheme, \
            activations
        if activations == "int8" and not exact_int32_sums(min(group_size or in_features, in_features)):
            raise ValueError(f"quantize: activations='int8' sums each group in int32; groups of at most 66,000 "
                             f"inputs (in_features {in_features}, group_size {group_size}): pass a group_size")
        _check_group(in_features, group_size)
        self.group_size = None if group_size is None else int(group_size)    # as asked (may exceed K)
        if scheme == "int8":
            g = self._group()
            self.register_buffer("weight", QuantizedWeight(np.zeros((out_features, in_features), np.int8)))
            self.register_buffer("weight_scale", Tensor(np.zeros((out_features, -(-in_features // g)), np.float32)))
        else:
            self.register_buffer("weight", QuantizedWeight(np.zeros((out_features, in_features), bfloat16())))
            self.weight_scale = None
        if bias:
            self.register_buffer("bias", Tensor(np.zeros(out_features, np.float32)))
        else:
            self.bias = None

    def _group(self) -> int:
        """The inputs each scale covers: group_size, or all of them."""
        return min(self.group_size or self.in_features, self.in_features)

    @classmethod
    def from_float(cls, weight, bias=None, scheme="int8", group_size=None, activations="float32"):
        """A QuantizedLinear of a float weight (N, K) (Tensor or array) and optional bias (N,)."""
        w = weight.data if isinstance(weight, Tensor) else weight
        n, k = w.shape
        m = cls(k, n, scheme, group_size, bias is not None, activations)
        if scheme == "int8":
            q, s = quantize_int8(w, m.group_size)
            m.weight.data, m.weight_scale.data = q, s
        else:
            m.weight.data = quantize_bf16(w)
        m.weight.data = get_array_module(w).ascontiguousarray(m.weight.data)
        if bias is not None:
            m.bias.data = (bias.data if isinstance(bias, Tensor) else bias).astype(np.float32)
        return m

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: input of shape {x.shape} does not fit in_features {self.in_features}")
        scale = self.weight_scale.data if self.weight_scale is not None else None
        group = self._group() if scale is not None else None
        act_int8 = self.activations == "int8"
        return QuantizedMatmul.apply(x, weight=self.weight.data, scale=scale,
                                     bias=None if self.bias is None else self.bias.data, group=group,
                                     act_int8=act_int8, wsum=self._wsum(group) if scale is not None else None)

    def _wsum(self, group):
        """wsum_int8 of the current weight array, computed once per array (a load replaces it)."""
        hit = self.__dict__.get("_wsum_of")
        if hit is None or hit[0] is not self.weight.data:
            hit = (self.weight.data, wsum_int8(self.weight.data, group))
            object.__setattr__(self, "_wsum_of", hit)
        return hit[1]

    def dequantized(self):
        """The float32 weight (N, K) this layer multiplies by."""
        return dequantize(self.weight.data, None if self.weight_scale is None else self.weight_scale.data,
                          self._group())

    def nbytes(self) -> int:
        return sum(int(t.data.nbytes) for t in (self.weight, self.weight_scale, self.bias) if t is not None)

    def requires_grad_(self, on=True):
        if on:
            raise RuntimeError(f"QuantizedLinear: {_INFERENCE_ONLY}")
        return self

    def extra_repr(self):
        g = f", group_size={self.group_size}" if self.group_size else ""
        a = ", activations=int8" if self.activations == "int8" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"scheme={self.scheme}{g}{a}")


# ---------------------------------------------------------------- whole models
def _targets(module):
    """(parent, name, float weight, bias) for every Linear below `module` and every tied head."""
    out = []
    for _, parent in module.named_modules():
        for name, child in list(parent._modules.items()):
            if isinstance(child, Linear):
                out.append((parent, name, child.weight, child.bias))
        if getattr(parent, "lm_head", False) is None and isinstance(getattr(parent, "wte", None), Module):
            out.append((parent, "lm_head", parent.wte.weight, None))
    return out


def _scheme_of(module):
    found = {(m.scheme, m.group_size, m.activations) for m in module.modules() if isinstance(m, QuantizedLinear)}
    if len(found) > 1:
        raise ValueError(f"the model mixes quantization schemes: {sorted(found, key=str)}")
    return found.pop() if found else None


def quantize_(module, scheme="int8", group_size=None, activations="float32"):
    """Replace every nn.Linear below `module` (and a tied head, see the module docstring) by a
    QuantizedLinear of its weights, in place; returns `module`. scheme "int8" (group_size None: one
    scale per output row; an int: per row and group of inputs) or "bfloat16" (group_size must be None).
    A model already quantized is refused."""
    if scheme in ("float32", "bf16"):
        scheme = {"float32": None, "bf16": "bfloat16"}[scheme]
        if scheme is None:
            return module
    if scheme not in SCHEMES:
        raise ValueError(f"quantize_: scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "bfloat16" and group_size is not None:
        raise ValueError("quantize_: group_size applies to int8 only")
    _check_group(1, group_size)
    if _scheme_of(module) is not None:
        raise ValueError(f"quantize_: the model is already quantized ({_scheme_of(module)[0]})")
    if isinstance(module, Linear):
        raise TypeError("quantize_: pass the model holding the Linear (it is replaced inside its parent), "
                        "or use QuantizedLinear.from_float")
    for parent, name, w, b in _targets(module):
        setattr(parent, name, QuantizedLinear.from_float(w, b, scheme, group_size, activations))
    pack_weights(module)
    return module


ARENA_ALIGN = 4096          # each weight starts on a page (the hardware prefetcher stops at page ends)


def pack_weights(module) -> int:
    """Move the quantized weights below `module` (host arrays) into one arena, each weight a
    page-aligned C-contiguous view of it (in module order); returns the arena's
    bytes (0: nothing to pack). Why: one int8 GPT-2 Linear is 0.6-2.4 MB, each its own array on 4 KiB
    pages, and a decode GEMV streams its weight through a TLB miss per page; in one arena on huge
    pages (minigrad.hugepages) the same GEMVs ran 25-40% faster (kernels/cpu/quant_bench.py --arena).
    Values, shapes and dtypes are unchanged."""
    layers = [m for m in module.modules() if isinstance(m, QuantizedLinear) and type(m.weight.data) is np.ndarray]
    if not layers:
        return 0
    for m, view in zip(layers, hugepages.pack([m.weight.data for m in layers], ARENA_ALIGN)):
        m.weight.data = view
    return sum(-(-m.weight.data.nbytes // ARENA_ALIGN) * ARENA_ALIGN for m in layers)


def dequantize_(module):
    """Replace every QuantizedLinear by an nn.Linear holding its dequantized float32 weight, so the
    model computes in float32 what the quantized one stands for; returns `module`. A tied head
    becomes an untied Linear too (set ``lm_head = None`` to multiply by the embedding again)."""
    for _, parent in list(module.named_modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, QuantizedLinear):
                lin = Linear(child.in_features, child.out_features, bias=child.bias is not None)
                lin.weight.data = child.dequantized()
                if child.bias is not None:
                    lin.bias.data = child.bias.data.copy()
                setattr(parent, name, lin)
    return module


def weight_bytes(module) -> int:
    """Bytes of the arrays a forward reads as weights (parameters and buffers, tied ones once)."""
    seen, total = set(), 0
    for m in module.modules():
        for t in list(m._params.values()) + list(m._buffers.values()):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += int(t.data.nbytes)
    return total


# ---------------------------------------------------------------- files
_ST_DTYPES = {"I8": np.dtype(np.int8), "F32": np.dtype(np.float32), "I32": np.dtype(np.int32),
              "I64": np.dtype(np.int64), "F64": np.dtype(np.float64), "U8": np.dtype(np.uint8)}


def save_quantized(module, path, metadata=None) -> Path:
    """Write a quantized model's state_dict to `path` as safetensors (atomically: a temp file renamed
    into place). metadata: extra {str: str} stored beside the scheme. Returns the path."""
    import safetensors.numpy as stnp
    found = _scheme_of(module)
    if found is None:
        raise ValueError("save_quantized: the model has no quantized layers; call quantize_ first")
    scheme, group, acts = found
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(format=FORMAT, version="1", scheme=scheme, group_size="none" if group is None else str(group),
                activations=acts)
    arrays = {k: np.ascontiguousarray(to_host(v)) for k, v in module.state_dict().items()}
    payload = stnp.save(arrays, metadata=meta)
    path = Path(path)
    write_atomic(path, payload)
    return path


def read_quantized(path):
    """(metadata {str: str}, arrays {name: ndarray}) of a save_quantized file; one-line errors."""
    from safetensors import deserialize
    path = Path(path)
    try:
        payload = path.read_bytes()
    except OSError as e:
        raise ValueError(f"load_quantized: cannot read {path} ({e.strerror or e})") from None
    try:
        n = int.from_bytes(payload[:8], "little")
        if len(payload) < 8 or n > len(payload) - 8:
            raise ValueError("header length past the end of the file")
        meta = json.loads(payload[8:8 + n]).get("__metadata__") or {}
        tensors = deserialize(payload)
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error type)
        raise ValueError(f"load_quantized: {path} is not a valid safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"load_quantized: {path} is not a minigrad quantized model (no format={FORMAT} metadata)")
    arrays = {}
    for name, t in tensors:
        dt = bfloat16() if t["dtype"] == "BF16" else _ST_DTYPES.get(t["dtype"])
        if dt is None:
            raise ValueError(f"load_quantized: {path}: tensor {name} has unsupported dtype {t['dtype']}")
        arrays[name] = np.frombuffer(bytearray(t["data"]), dtype=dt).reshape(t["shape"])
    return meta, arrays


def load_quantized(module, path):
    """Load a save_quantized file into `module`, a float model of the same structure (it is
    converted to the file's scheme first, without quantizing its own weights) or one already
    quantized the same way. Names, shapes and dtypes must match; returns `module`."""
    meta, arrays = read_quantized(path)
    scheme, acts = meta.get("scheme"), meta.get("activations", "float32")
    try:
        group = None if meta.get("group_size", "none") == "none" else int(meta["group_size"])
    except ValueError:
        raise ValueError(f"load_quantized: {path}: bad group_size {meta.get('group_size')!r}") from None
    if scheme not in SCHEMES:
        raise ValueError(f"load_quantized: {path}: unknown scheme {scheme!r}")
    have = _scheme_of(module)
    if have is None:
        for parent, name, w, b in _targets(module):
            n, k = w.shape
            setattr(parent, name, QuantizedLinear(k, n, scheme, group, b is not None, acts))
    elif have != (scheme, group, acts):
        raise ValueError(f"load_quantized: the model is quantized as {have}, the file as {(scheme, group, acts)} "
                         "(scheme, group_size, activations)")
    own = module.state_dict()
    for k, v in arrays.items():
        if k in own and own[k].dtype != v.dtype:
            raise ValueError(f"load_quantized: {path}: {k} is {v.dtype} in the file, {own[k].dtype} in the model")
    try:
        module.load_state_dict(arrays, strict=True)
    except KeyError as e:
        raise ValueError(f"load_quantized: {path} does not fit the model: {e.args[0]}") from None
    pack_weights(module)
    return module
