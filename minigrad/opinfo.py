"""The op registry: every op with sample inputs and a NumPy reference.

``minigrad gradcheck`` sweeps it (first and second order) and the tests run every entry
through the forward-vs-reference, gradcheck and gradgradcheck checks. An entry:

    OpInfo(name, fn, make, ref, ...)
      fn(*tensors) -> Tensor           the op under test, in minigrad
      make(rng, shapes) -> [arrays]    sample inputs (float inputs are differentiated)
      ref(*arrays) -> array            the same computation in plain NumPy
      shapes                           default input shapes; ``broadcast`` says shapes may broadcast
      variants                         the fast implementations the dispatch point may choose for this op
                                       besides the NumPy reference: "native" (the C++ loops of kernels/cpu,
                                       MINIGRAD_CPU_NATIVE) and "emulate" (the CUDA kernels through the CPU
                                       emulator, MINIGRAD_KERNELS=emulate). Tests run each declared variant
                                       and check that it really ran.
      variant_shapes                   {variant: shapes} where a variant needs other input shapes than
                                       ``shapes`` to be eligible (the attention kernels need head dim >= 16)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import functions as mgf
from .nn import functional as F

_erf = np.vectorize(math.erf, otypes=[np.float64])


@dataclass
class OpInfo:
    name: str
    fn: Callable
    ref: Callable
    shapes: tuple                      # one shape per input
    make: Callable | None = None       # (rng, shapes, dtype) -> list of arrays; default: standard normal
    second_order: bool = True
    kind: str = "elementwise"          # elementwise | binary | reduce | shape | linalg | nn
    hypothesis: bool = True            # whether tests draw random shapes for it
    note: str = ""
    extra: dict = field(default_factory=dict)
    variants: tuple = ()               # "native", "emulate": see the module docstring
    variant_shapes: dict = field(default_factory=dict)

    def inputs(self, rng, dtype=np.float64, shapes=None):
        shapes = shapes or self.shapes
        if self.make is not None:
            return self.make(rng, shapes, dtype)
        return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _positive(rng, shapes, dtype):
    return [rng.uniform(0.5, 2.0, s).astype(dtype) for s in shapes]


def _away_from_kinks(rng, shapes, dtype):
    """Values with |x| >= 0.1 so relu/abs/clip are differentiable where we sample."""
    out = []
    for s in shapes:
        x = rng.uniform(0.1, 2.0, s) * rng.choice([-1.0, 1.0], s)
        out.append(x.astype(dtype))
    return out


def _distinct(rng, shapes, dtype):
    """A permutation of well-separated values: max/min/maximum are differentiable there (no ties)."""
    out = []
    total = sum(int(np.prod(s)) for s in shapes)
    vals = rng.permutation(total).astype(dtype) * 0.1 - total * 0.05
    i = 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(vals[i:i + n].reshape(s))
        i += n
    return out


def _softmax_ref(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _lse_ref(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _ln_ref(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _sdpa_ref(q, k, v, causal=False, keep=None):
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    tq, tk = s.shape[-2:]
    allowed = np.ones(s.shape, bool)
    if causal:
        allowed &= np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
    if keep is not None:
        allowed &= keep
    s = np.where(allowed, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    d = e.sum(-1, keepdims=True)
    return (e / np.where(d > 0, d, 1)) @ v


_KEEP = np.array([[True, True, False, True, False, True]], bool)[:, None, None, :]   # (1,1,1,6)
_TARGET = np.array([1, 0, 3, 2, -100, 3])
_IDX = np.array([[0, 2, 2], [4, 0, 2]])


def _ints(a):
    from .tensor import Tensor
    return Tensor(a)


OPS: list[OpInfo] = [
    # ---- binary elementwise (broadcasting)
    OpInfo("add", lambda a, b: a + b, np.add, ((3, 4), (4,)), kind="binary"),
    OpInfo("sub", lambda a, b: a - b, np.subtract, ((3, 1), (1, 4)), kind="binary"),
    OpInfo("mul", lambda a, b: a * b, np.multiply, ((2, 3, 4), (3, 1)), kind="binary"),
    OpInfo("div", lambda a, b: a / b, np.divide, ((3, 4), (3, 4)), kind="binary",
           make=lambda r, s, d: [r.standard_normal(s[0]).astype(d), r.uniform(0.5, 2, s[1]).astype(d)]),
    OpInfo("pow", lambda a, b: a ** b, np.power, ((3, 4), (4,)), make=_positive, kind="binary"),
    OpInfo("maximum", mgf.maximum, np.maximum, ((3, 4), (3, 4)), make=_distinct, kind="binary"),
    OpInfo("minimum", mgf.minimum, np.minimum, ((3, 4), (1, 4)), make=_distinct, kind="binary"),
    OpInfo("where", lambda a, b: mgf.where(a.data > 0, a, b), lambda a, b: np.where(a > 0, a, b),
           ((3, 4), (3, 4)), make=_away_from_kinks, kind="binary"),
    # ---- unary elementwise
    OpInfo("neg", lambda a: -a, np.negative, ((3, 4),)),
    OpInfo("pow_scalar", lambda a: a ** 3, lambda a: a ** 3, ((3, 4),)),
    OpInfo("pow_half", lambda a: a ** 0.5, np.sqrt, ((3, 4),), make=_positive),
    OpInfo("exp", lambda a: a.exp(), np.exp, ((3, 4),)),
    OpInfo("log", lambda a: a.log(), np.log, ((3, 4),), make=_positive),
    OpInfo("sqrt", lambda a: a.sqrt(), np.sqrt, ((3, 4),), make=_positive),
    OpInfo("tanh", lambda a: a.tanh(), np.tanh, ((3, 4),)),
    OpInfo("sigmoid", F.sigmoid, lambda a: 1 / (1 + np.exp(-a)), ((3, 4),)),
    OpInfo("relu", F.relu, lambda a: np.maximum(a, 0), ((3, 4),), make=_away_from_kinks),
    OpInfo("abs", lambda a: a.abs(), np.abs, ((3, 4),), make=_away_from_kinks),
    OpInfo("clip", lambda a: a.clip(-0.5, 0.5), lambda a: np.clip(a, -0.5, 0.5), ((3, 4),),
           make=lambda r, s, d: [np.where(np.abs(x - 0.5) < 0.05, x + 0.2, x) for x in _away_from_kinks(r, s, d)]),
    OpInfo("gelu", F.gelu, lambda a: 0.5 * a * (1 + _erf(a / math.sqrt(2))), ((3, 4),), kind="nn"),
    OpInfo("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"),
           lambda a: 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3))), ((3, 4),), kind="nn"),
    # ---- reductions
    OpInfo("sum", lambda a: a.sum(), np.sum, ((3, 4),), kind="reduce"),
    OpInfo("sum_axis", lambda a: a.sum(axis=1, keepdims=True), lambda a: a.sum(1, keepdims=True), ((2, 3, 4),),
           kind="reduce"),
    OpInfo("mean_axes", lambda a: a.mean(axis=(0, 2)), lambda a: a.mean((0, 2)), ((2, 3, 4),), kind="reduce"),
    OpInfo("max_axis", lambda a: a.max(axis=-1), lambda a: a.max(-1), ((3, 4),), make=_distinct, kind="reduce"),
    OpInfo("min", lambda a: a.min(), np.min, ((3, 4),), make=_distinct, kind="reduce"),
    OpInfo("var", lambda a: a.var(axis=0), lambda a: a.var(0), ((5, 3),), kind="reduce"),
    OpInfo("logsumexp", lambda a: F.logsumexp(a, axis=-1), lambda a: _lse_ref(a, -1), ((3, 5),), kind="nn"),
    # ---- shape and indexing
    OpInfo("reshape", lambda a: a.reshape(4, 6), lambda a: a.reshape(4, 6), ((2, 3, 4),), kind="shape"),
    OpInfo("transpose", lambda a: a.transpose(2, 0, 1), lambda a: a.transpose(2, 0, 1), ((2, 3, 4),), kind="shape"),
    OpInfo("swapaxes", lambda a: a.swapaxes(0, -1), lambda a: a.swapaxes(0, -1), ((2, 3, 4),), kind="shape"),
    OpInfo("squeeze", lambda a: a.squeeze(1), lambda a: a.squeeze(1), ((3, 1, 4),), kind="shape"),
    OpInfo("expand_dims", lambda a: a.expand_dims(0), lambda a: a[None], ((3, 4),), kind="shape"),
    OpInfo("broadcast_to", lambda a: a.broadcast_to((2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4)),
           ((3, 1),), kind="shape"),
    OpInfo("getitem_slice", lambda a: a[1:, ::2, None, -1], lambda a: a[1:, ::2, None, -1], ((3, 4, 5),),
           kind="shape"),
    OpInfo("getitem_repeat", lambda a: a[np.array([0, 2, 0, 0])], lambda a: a[np.array([0, 2, 0, 0])], ((3, 4),),
           kind="shape", note="repeated indices accumulate in backward"),
    OpInfo("concatenate", lambda a, b: mgf.concatenate([a, b], axis=1), lambda a, b: np.concatenate([a, b], 1),
           ((2, 3), (2, 5)), kind="shape"),
    OpInfo("stack", lambda a, b: mgf.stack([a, b], axis=-1), lambda a, b: np.stack([a, b], -1),
           ((2, 3), (2, 3)), kind="shape"),
    OpInfo("split", lambda a: mgf.split(a, [1, 3], axis=1)[1], lambda a: np.split(a, [1, 3], axis=1)[1],
           ((2, 5),), kind="shape"),
    # ---- linear algebra
    OpInfo("matmul_2d", lambda a, b: a @ b, np.matmul, ((3, 4), (4, 5)), kind="linalg"),
    OpInfo("matmul_1d_1d", lambda a, b: a @ b, np.matmul, ((4,), (4,)), kind="linalg"),
    OpInfo("matmul_2d_1d", lambda a, b: a @ b, np.matmul, ((3, 4), (4,)), kind="linalg"),
    OpInfo("matmul_1d_3d", lambda a, b: a @ b, np.matmul, ((4,), (2, 4, 3)), kind="linalg"),
    OpInfo("matmul_batched_broadcast", lambda a, b: a @ b, np.matmul, ((2, 1, 3, 4), (3, 4, 2)), kind="linalg"),
    # ---- nn functions
    OpInfo("softmax", lambda a: F.softmax(a, axis=-1), _softmax_ref, ((3, 5),), kind="nn"),
    OpInfo("log_softmax", lambda a: F.log_softmax(a, axis=0), lambda a: np.log(_softmax_ref(a, 0)), ((4, 3),),
           kind="nn"),
    OpInfo("cross_entropy", lambda a: F.cross_entropy(a, _TARGET),
           lambda a: -np.log(_softmax_ref(a))[np.arange(6)[_TARGET >= 0], _TARGET[_TARGET >= 0]].mean(),
           ((6, 4),), kind="nn", hypothesis=False, note="ignore_index=-100 on one row"),
    OpInfo("mse_loss", lambda a, b: F.mse_loss(a, b), lambda a, b: ((a - b) ** 2).mean(), ((3, 4), (3, 4)), kind="nn"),
    OpInfo("layer_norm", lambda x, w, b: F.layer_norm(x, 5, w, b), _ln_ref, ((2, 3, 5), (5,), (5,)), kind="nn",
           hypothesis=False),
    OpInfo("linear", lambda x, w, b: F.linear(x, w, b), lambda x, w, b: x @ w.T + b, ((2, 3, 4), (5, 4), (5,)),
           kind="nn", hypothesis=False),
    OpInfo("embedding", lambda w: F.embedding(_IDX, w), lambda w: w[_IDX], ((5, 3),), kind="nn", hypothesis=False,
           note="repeated indices accumulate"),
    OpInfo("sdpa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v), _sdpa_ref,
           ((1, 2, 4, 3), (1, 2, 6, 3), (1, 2, 6, 3)), kind="nn", hypothesis=False, note="Tq != Tk"),
    OpInfo("sdpa_causal_padded", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_KEEP,
                                                                                 is_causal=True),
           lambda q, k, v: _sdpa_ref(q, k, v, True, _KEEP), ((1, 2, 4, 3), (1, 2, 6, 3), (1, 2, 6, 3)),
           kind="nn", hypothesis=False, note="bottom-right causal + key padding"),
    OpInfo("dropout_fixed_mask", lambda a: F.dropout(a, 0.3, True, np.random.default_rng(7)),
           lambda a: a * (np.random.default_rng(7).random(a.shape) >= 0.3) / 0.7, ((4, 5),), kind="nn",
           hypothesis=False, note="a seeded generator makes the mask fixed"),
]


def _gelu_mlp_ref(x, w1, b1, w2, b2):
    h = x @ w1.T + b1
    return (0.5 * h * (1 + _erf(h / math.sqrt(2)))) @ w2.T + b2


def _qkv_ref(qkv, n_head, causal, scale=None):
    """The packed (B, T, 3E) projection split into q, k, v and heads, attended, heads put back."""
    b, t, e3 = qkv.shape
    hs = e3 // 3 // n_head
    h = qkv.reshape(b, t, 3, n_head, hs).transpose(2, 0, 3, 1, 4)            # (3, B, nh, T, hs)
    q = h[0] if scale is None else h[0] * (scale * math.sqrt(hs))            # _sdpa_ref scales by 1/sqrt(hs)
    return _sdpa_ref(q, h[1], h[2], causal).transpose(0, 2, 1, 3).reshape(b, t, e3 // 3)


# the fused GPT ops: one op each on the CPU with the native library, else their composition
OPS += [
    OpInfo("gelu_mlp", lambda x, w1, b1, w2, b2: F.gelu_mlp(x, w1, b1, w2, b2), _gelu_mlp_ref,
           ((4, 5), (6, 5), (6,), (3, 6), (3,)), kind="nn", hypothesis=False,
           note="linear -> exact gelu -> linear"),
    OpInfo("qkv_self_attention", lambda qkv: F.qkv_self_attention(qkv, 2, is_causal=True),
           lambda qkv: _qkv_ref(qkv, 2, True), ((2, 4, 12),), kind="nn", hypothesis=False,
           note="2 heads of size 2, causal"),
    OpInfo("qkv_self_attention_full", lambda qkv: F.qkv_self_attention(qkv, 3, scale=0.4),
           lambda qkv: _qkv_ref(qkv, 3, False, 0.4),
           ((2, 3, 18),), kind="nn", hypothesis=False, note="3 heads of size 2, not causal, explicit scale"),
]

# Which ops have fast variants (see the module docstring), and the shapes that make them eligible.
_VARIANTS = {
    "gelu": ("native",),
    "getitem_repeat": ("native",),       # the scatter-add of repeated rows
    "embedding": ("native",),
    "cross_entropy": ("native",),
    "layer_norm": ("native", "emulate"),
    "sdpa": ("native", "emulate"),
    "sdpa_causal_padded": ("native", "emulate"),
    "gelu_mlp": ("native",),
    "qkv_self_attention": ("native", "emulate"),
    "qkv_self_attention_full": ("native", "emulate"),
}
# the attention kernels take head dims 16..128 only
_EMULATE_SHAPES = {"sdpa": ((1, 2, 4, 16), (1, 2, 6, 16), (1, 2, 6, 16)),
                   "sdpa_causal_padded": ((1, 2, 4, 16), (1, 2, 6, 16), (1, 2, 6, 16)),
                   "qkv_self_attention": ((1, 3, 96),),          # 2 heads of 16
                   "qkv_self_attention_full": ((1, 2, 144),)}    # 3 heads of 16
for _op in OPS:
    _op.variants = _op.variants or _VARIANTS.get(_op.name, ())
    if _op.name in _EMULATE_SHAPES:
        _op.variant_shapes.setdefault("emulate", _EMULATE_SHAPES[_op.name])

BY_NAME = {op.name: op for op in OPS}
