"""The op registry: every op with sample inputs and a NumPy reference.

``minigrad gradcheck`` sweeps it (first and second order) and the tests run every entry
through the forward-vs-reference, gradcheck and gradgradcheck checks. An entry:

    OpInfo(name, fn, make, ref, ...)
      fn(*tensors) -> Tensor           the op under test, in minigrad
      make(rng, shapes) -> [arrays]    sample inputs (float inputs are differentiated)
      ref(*arrays) -> array            the same computation in plain NumPy
      shapes                           default input shapes; ``broadcast`` says shapes may broadcast
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


def _gelu_mlp_ref(x, w1, b1, w2, b2):
    h = x @ w1.T + b1
    return (0.5 * h * (1 + _erf(h / math.sqrt(2)))) @ w2.T + b2


def _qkv_ref(qkv, n_head=2, causal=True):
    """q|k|v (B, T, 3C) -> per-head causal attention, heads side by side (B, T, C)."""
    b, t, c3 = qkv.shape
    q, k, v = qkv.reshape(b, t, 3, n_head, c3 // 3 // n_head).transpose(2, 0, 3, 1, 4)
    return _sdpa_ref(q, k, v, causal).transpose(0, 2, 1, 3).reshape(b, t, c3 // 3)


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
    OpInfo("gelu_mlp", lambda x, w1, b1, w2, b2: F.gelu_mlp(x, w1, b1, w2, b2), _gelu_mlp_ref,
           ((4, 3), (5, 3), (5,), (2, 5), (2,)), kind="nn", hypothesis=False, note="the fused GPT MLP"),
    OpInfo("qkv_self_attention", lambda qkv: F.qkv_self_attention(qkv, 2, is_causal=True), _qkv_ref,
           ((2, 5, 12),), kind="nn", hypothesis=False, note="the fused GPT attention, 2 causal heads"),
    OpInfo("dropout_fixed_mask", lambda a: F.dropout(a, 0.3, True, np.random.default_rng(7)),
           lambda a: a * (np.random.default_rng(7).random(a.shape) >= 0.3) / 0.7, ((4, 5),), kind="nn",
           hypothesis=False, note="a seeded generator makes the mask fixed"),
]

# ================================================================ issue 17: the math op set
# Sample inputs stay away from each op's kinks and jumps (central differences need a smooth
# neighbourhood): rounding away from integers and halves, |x| away from 0 for abs-like ops, a/b
# away from integers for floor division. Kinds: "axis" entries run along a fixed axis; their
# drawn shapes and axes are in tests/test_math_hypothesis.py (the generic shape strategies cannot
# know the axis). OPS_MATH_NOGRAD holds ops whose outputs carry no gradient (indices, booleans,
# integer arithmetic): forward against NumPy only, in tests/test_math_ops.py.
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _uniform(lo, hi):
    return lambda r, s, d: [r.uniform(lo, hi, sh).astype(d) for sh in s]


def _avoid(points, scale=1.0, margin=0.05):
    """Normal samples times ``scale``, any value within ``margin`` of a point moved 2·margin off it."""
    def make(r, s, d):
        out = []
        for sh in s:
            x = r.standard_normal(sh) * scale
            for p in points:
                near = np.abs(x - p) < margin
                x = np.where(near, p + np.where(x >= p, 2, -2) * margin, x)
            out.append(x.astype(d))
        return out
    return make


def _off_integers(rng, shapes, dtype):
    """k + f with f in [0.1, 0.4] or [0.6, 0.9]: away from integers (floor, ceil, trunc) and halves (round)."""
    out = []
    for s in shapes:
        f = rng.uniform(0.1, 0.4, s) + 0.5 * rng.integers(0, 2, s)
        out.append((rng.integers(-3, 3, s) + f).astype(dtype))
    return out


def _divisible(rng, shapes, dtype):
    """a = ±(0.5k + u), u in [0.1, 0.4], b in {±0.5, ±1, ±2}: a/b is at least 0.05 from an integer for
    every pair that broadcasting brings together (floor_divide, remainder and fmod are smooth there)."""
    a = (rng.integers(0, 8, shapes[0]) * 0.5 + rng.uniform(0.1, 0.4, shapes[0])) * rng.choice([-1.0, 1.0], shapes[0])
    b = rng.choice([0.5, 1.0, 2.0], shapes[1]) * rng.choice([-1.0, 1.0], shapes[1])
    return [a.astype(dtype), b.astype(dtype)]


def _with_zeros(rng, shapes, dtype):
    """Normal samples with zeros at flat positions 1, 4 and 5 (where present): one zero in some groups,
    two in others, so the zero-aware gradients of prod and cumprod are exercised."""
    x = rng.standard_normal(shapes[0]).reshape(-1)
    x[[i for i in (1, 4, 5) if i < x.size]] = 0.0
    return [x.reshape(shapes[0]).astype(dtype)]


def _probs(rng, shapes, dtype):
    return [rng.uniform(0.05, 0.95, s).astype(dtype) for s in shapes]


def _sigmoid_ref(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def _softplus_ref(x, beta=1.0, threshold=20.0):
    return np.where(beta * x > threshold, x, np.logaddexp(0, beta * x) / beta)


def _elu_ref(x, alpha=1.0, scale=1.0, input_scale=1.0):
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) * input_scale))


def _topk_ref(a, k, axis, largest=True):
    order = np.argsort(-a if largest else a, axis=axis, kind="stable")
    return np.take_along_axis(a, np.take(order, np.arange(k), axis=axis), axis=axis)


def _log_softmax_ref(x):
    return x - _lse_ref(x, -1)[..., None]


_T4 = np.array([1, 0, 3, 2, -100, 3])         # class targets for 6 rows of 4 classes, one ignored
_W4 = np.array([0.5, 2.0, 1.0, 1.5])          # class weights


def _nll_ref(logp, t=_T4, w=_W4):
    v = t >= 0
    picked = logp[np.arange(len(t))[v], t[v]]
    return -(picked * w[t[v]]).sum() / w[t[v]].sum()


def _ce_smooth_ref(x, t=_T4, w=_W4, eps=0.2):
    """Weighted, smoothed cross-entropy from its definition: targets (1 - eps)·onehot + eps/C,
    each class weighted, divided by the summed weights of the counted rows' targets."""
    v = t >= 0
    logp = _log_softmax_ref(x)[v]
    q = (1 - eps) * np.eye(x.shape[1])[t[v]] + eps / x.shape[1]
    return -(w * q * logp).sum() / w[t[v]].sum()


def _bce_logits_ref(x, t, pw):
    # log sigmoid(x) = -logaddexp(0, -x), log(1 - sigmoid(x)) = -logaddexp(0, x)
    return (pw * t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)).mean()


def _glu_ref(x):
    n = x.shape[-1] // 2
    return x[..., :n] * _sigmoid_ref(x[..., n:])


def _huber_ref(d, k):
    a = np.abs(d)
    return np.where(a < k, 0.5 * d * d, k * (a - 0.5 * k))


_PW = np.array([0.5, 1.0, 3.0])               # pos_weight per class (last axis)


OPS_MATH: list[OpInfo] = [
    # ---- unary math
    OpInfo("sin", lambda a: a.sin(), np.sin, ((3, 4),)),
    OpInfo("cos", lambda a: a.cos(), np.cos, ((3, 4),)),
    OpInfo("tan", lambda a: a.tan(), np.tan, ((3, 4),), make=_uniform(-1.2, 1.2)),
    OpInfo("asin", lambda a: a.asin(), np.arcsin, ((3, 4),), make=_uniform(-0.9, 0.9)),
    OpInfo("acos", lambda a: a.acos(), np.arccos, ((3, 4),), make=_uniform(-0.9, 0.9)),
    OpInfo("atan", lambda a: a.atan(), np.arctan, ((3, 4),)),
    OpInfo("sinh", lambda a: a.sinh(), np.sinh, ((3, 4),)),
    OpInfo("cosh", lambda a: a.cosh(), np.cosh, ((3, 4),)),
    OpInfo("asinh", lambda a: a.asinh(), np.arcsinh, ((3, 4),)),
    OpInfo("acosh", lambda a: a.acosh(), np.arccosh, ((3, 4),), make=_uniform(1.1, 3.0)),
    OpInfo("atanh", lambda a: a.atanh(), np.arctanh, ((3, 4),), make=_uniform(-0.9, 0.9)),
    OpInfo("log2", lambda a: a.log2(), np.log2, ((3, 4),), make=_positive),
    OpInfo("log10", lambda a: a.log10(), np.log10, ((3, 4),), make=_positive),
    OpInfo("log1p", lambda a: a.log1p(), np.log1p, ((3, 4),), make=_uniform(-0.8, 2.0)),
    OpInfo("exp2", lambda a: a.exp2(), np.exp2, ((3, 4),)),
    OpInfo("expm1", lambda a: a.expm1(), np.expm1, ((3, 4),)),
    OpInfo("reciprocal", lambda a: a.reciprocal(), np.reciprocal, ((3, 4),), make=_away_from_kinks),
    OpInfo("rsqrt", lambda a: a.rsqrt(), lambda a: 1 / np.sqrt(a), ((3, 4),), make=_positive),
    OpInfo("square", lambda a: a.square(), np.square, ((3, 4),)),
    OpInfo("erf", lambda a: a.erf(), _erf, ((3, 4),)),
    OpInfo("erfc", lambda a: a.erfc(), _erfc, ((3, 4),), make=_uniform(-3.0, 5.0)),
    OpInfo("atan2", mgf.atan2, np.arctan2, ((3, 4), (4,)), kind="binary"),
    # ---- rounding: zero gradient
    OpInfo("sign", lambda a: a.sign(), np.sign, ((3, 4),), make=_away_from_kinks, note="zero gradient"),
    OpInfo("floor", lambda a: a.floor(), np.floor, ((3, 4),), make=_off_integers, note="zero gradient"),
    OpInfo("ceil", lambda a: a.ceil(), np.ceil, ((3, 4),), make=_off_integers, note="zero gradient"),
    OpInfo("round", lambda a: a.round(), np.round, ((3, 4),), make=_off_integers, note="zero gradient, half to even"),
    OpInfo("trunc", lambda a: a.trunc(), np.trunc, ((3, 4),), make=_off_integers, note="zero gradient"),
    # ---- division with rounding on floats
    OpInfo("floor_divide", lambda a, b: a // b, np.floor_divide, ((3, 4), (4,)), make=_divisible, kind="binary",
           note="zero gradient"),
    OpInfo("remainder", lambda a, b: a % b, np.remainder, ((3, 4), (3, 1)), make=_divisible, kind="binary",
           note="sign of the divisor"),
    OpInfo("fmod", mgf.fmod, np.fmod, ((3, 4), (4,)), make=_divisible, kind="binary", note="sign of the dividend"),
    # ---- reductions
    OpInfo("prod", lambda a: a.prod(), np.prod, ((3, 4),), kind="reduce"),
    OpInfo("prod_zeros", lambda a: a.prod(), np.prod, ((3, 4),), make=_with_zeros, kind="reduce",
           note="three zeros: the zero-aware gradient"),
    OpInfo("prod_axis_zeros", lambda a: a.prod(axis=(0, 2)), lambda a: a.prod((0, 2)), ((2, 3, 2),),
           make=_with_zeros, kind="axis", note="one or two zeros per group"),
    OpInfo("std", lambda a: a.std(axis=0, ddof=1), lambda a: a.std(0, ddof=1), ((5, 3),), kind="axis"),
    OpInfo("norm2", lambda a: a.norm(), lambda a: np.sqrt((a * a).sum()), ((3, 4),), kind="reduce"),
    OpInfo("norm2_axis", lambda a: a.norm(2, axis=-1, keepdims=True),
           lambda a: np.linalg.norm(a, 2, axis=-1, keepdims=True), ((3, 4),), kind="axis"),
    OpInfo("norm1", lambda a: a.norm(1), lambda a: np.abs(a).sum(), ((3, 4),), make=_away_from_kinks,
           kind="reduce"),
    OpInfo("norm_inf", lambda a: a.norm(float("inf")), lambda a: np.abs(a).max(), ((3, 4),), make=_distinct,
           kind="reduce", hypothesis=False, note="the max of an empty tensor is refused (drawn in the math tests)"),
    # ---- scans and order
    OpInfo("cumsum", lambda a: a.cumsum(1), lambda a: np.cumsum(a, 1), ((3, 4),), kind="axis"),
    OpInfo("cumsum_flat", lambda a: a.cumsum(), np.cumsum, ((2, 3),), kind="reduce", hypothesis=False,
           note="axis None flattens, as NumPy"),
    OpInfo("cumprod", lambda a: a.cumprod(0), lambda a: np.cumprod(a, 0), ((4, 3),), kind="axis"),
    OpInfo("cumprod_zeros", lambda a: a.cumprod(-1), lambda a: np.cumprod(a, -1), ((2, 4),), make=_with_zeros,
           kind="axis", note="a zero in one row, two in the other"),
    OpInfo("logcumsumexp", lambda a: a.logcumsumexp(1), lambda a: np.logaddexp.accumulate(a, 1), ((3, 5),),
           kind="axis"),
    OpInfo("logcumsumexp_wide", lambda a: a.logcumsumexp(0), lambda a: np.logaddexp.accumulate(a, 0), ((6, 2),),
           make=lambda r, s, d: [(r.standard_normal(s[0]) * 300).astype(d)], kind="axis",
           note="values spread over hundreds: no overflow, no underflow"),
    OpInfo("sort", lambda a: a.sort(-1)[0], lambda a: np.sort(a, -1), ((3, 5),), make=_distinct, kind="axis"),
    OpInfo("sort_descending", lambda a: a.sort(0, descending=True).values, lambda a: -np.sort(-a, 0), ((4, 3),),
           make=_distinct, kind="axis"),
    OpInfo("topk", lambda a: a.topk(2, axis=1).values, lambda a: _topk_ref(a, 2, 1), ((3, 5),), make=_distinct,
           kind="axis"),
    OpInfo("topk_smallest", lambda a: a.topk(3, axis=0, largest=False)[0], lambda a: _topk_ref(a, 3, 0, False),
           ((4, 2),), make=_distinct, kind="axis"),
    # ---- activations (elementwise; nn.functional)
    OpInfo("silu", F.silu, lambda a: a * _sigmoid_ref(a), ((3, 4),)),
    OpInfo("mish", F.mish, lambda a: a * np.tanh(np.logaddexp(0, a)), ((3, 4),)),
    OpInfo("softplus", F.softplus, _softplus_ref, ((3, 4),)),
    OpInfo("softplus_beta_threshold", lambda a: F.softplus(a, beta=2.0, threshold=3.0),
           lambda a: _softplus_ref(a, 2.0, 3.0), ((3, 4),), make=_avoid([1.5], scale=2.0),
           note="linear above x = 1.5"),
    OpInfo("logsigmoid", F.logsigmoid, lambda a: -np.logaddexp(0, -a), ((3, 4),), make=_avoid([], scale=10.0)),
    OpInfo("softsign", F.softsign, lambda a: a / (1 + np.abs(a)), ((3, 4),), make=_away_from_kinks),
    OpInfo("leaky_relu", lambda a: F.leaky_relu(a, 0.2), lambda a: np.where(a > 0, a, 0.2 * a), ((3, 4),),
           make=_away_from_kinks),
    OpInfo("elu", F.elu, _elu_ref, ((3, 4),), make=_away_from_kinks),
    OpInfo("selu", F.selu, lambda a: _elu_ref(a, 1.6732632423543772, 1.0507009873554805), ((3, 4),),
           make=_away_from_kinks),
    OpInfo("celu", lambda a: F.celu(a, 0.7), lambda a: _elu_ref(a, 0.7, 1.0, 1 / 0.7), ((3, 4),),
           make=_away_from_kinks),
    OpInfo("hardtanh", lambda a: F.hardtanh(a, -0.5, 1.0), lambda a: np.clip(a, -0.5, 1.0), ((3, 4),),
           make=_avoid([-0.5, 1.0])),
    OpInfo("relu6", F.relu6, lambda a: np.clip(a, 0, 6), ((3, 4),), make=_avoid([0.0, 6.0], scale=4.0)),
    OpInfo("hardsigmoid", F.hardsigmoid, lambda a: np.clip(a / 6 + 0.5, 0, 1), ((3, 4),),
           make=_avoid([-3.0, 3.0], scale=3.0)),
    OpInfo("hardswish", F.hardswish, lambda a: a * np.clip(a / 6 + 0.5, 0, 1), ((3, 4),),
           make=_avoid([-3.0, 3.0], scale=3.0)),
    OpInfo("glu", F.glu, _glu_ref, ((3, 4),), kind="nn", hypothesis=False, note="halves of the last axis"),
    # ---- losses (nn.functional; class scores on the last axis)
    OpInfo("nll_loss", lambda a: F.nll_loss(a, _T4, weight=_W4), _nll_ref, ((6, 4),), kind="nn", hypothesis=False,
           note="class weights, one ignored row"),
    OpInfo("cross_entropy_smoothing_weights",
           lambda a: F.cross_entropy(a, _T4, weight=_W4, label_smoothing=0.2), _ce_smooth_ref, ((6, 4),), kind="nn",
           hypothesis=False, note="label_smoothing 0.2, class weights, one ignored row"),
    OpInfo("cross_entropy_probs", lambda a, p: F.cross_entropy(a, F.softmax(p), label_smoothing=0.1),
           lambda a, p: -((0.9 * _softmax_ref(p) + 0.1 / 4) * _log_softmax_ref(a)).sum(-1).mean(),
           ((5, 4), (5, 4)), kind="nn", hypothesis=False, note="probability targets (differentiated too)"),
    OpInfo("binary_cross_entropy", lambda p, t: F.binary_cross_entropy(p, t),
           lambda p, t: -(t * np.log(p) + (1 - t) * np.log1p(-p)).mean(), ((3, 4), (3, 4)), make=_probs, kind="nn",
           hypothesis=False),
    OpInfo("binary_cross_entropy_with_logits",
           lambda x, t: F.binary_cross_entropy_with_logits(x, t, pos_weight=mgf.tensor(_PW, dtype=x.dtype)),
           lambda x, t: _bce_logits_ref(x, t, _PW),
           ((4, 3), (4, 3)), make=lambda r, s, d: [r.standard_normal(s[0]).astype(d), _probs(r, s[1:], d)[0]],
           kind="nn", hypothesis=False, note="pos_weight per class"),
    OpInfo("l1_loss", lambda a, b: F.l1_loss(a, b), lambda a, b: np.abs(a - b).mean(), ((3, 4), (3, 4)),
           make=lambda r, s, d: [_away_from_kinks(r, s[:1], d)[0], np.zeros(s[1], d)],
           kind="nn", hypothesis=False),
    OpInfo("smooth_l1_loss", lambda a, b: F.smooth_l1_loss(a, b, beta=0.5),
           lambda a, b: (_huber_ref(a - b, 0.5) / 0.5).mean(), ((3, 4), (3, 4)),
           make=lambda r, s, d: [_avoid([0.5, -0.5])(r, s[:1], d)[0], np.zeros(s[1], d)], kind="nn", hypothesis=False),
    OpInfo("huber_loss", lambda a, b: F.huber_loss(a, b, reduction="sum", delta=0.8),
           lambda a, b: _huber_ref(a - b, 0.8).sum(), ((3, 4), (3, 4)),
           make=lambda r, s, d: [_avoid([0.8, -0.8])(r, s[:1], d)[0], np.zeros(s[1], d)], kind="nn", hypothesis=False),
    OpInfo("kl_div", lambda a, t: F.kl_div(F.log_softmax(a), F.softmax(t), reduction="batchmean"),
           lambda a, t: (_softmax_ref(t) * (np.log(_softmax_ref(t)) - _log_softmax_ref(a))).sum() / a.shape[0],
           ((3, 4), (3, 4)), kind="nn", hypothesis=False),
    OpInfo("kl_div_log_target", lambda a, t: F.kl_div(a, t, reduction="sum", log_target=True),
           lambda a, t: (np.exp(t) * (t - a)).sum(), ((3, 4), (3, 4)), kind="nn", hypothesis=False),
]

def _ints(lo, hi, dtype=np.int64, nonzero=False):
    def make(r, s, d):
        out = []
        for sh in s:
            x = r.integers(lo, hi, sh).astype(dtype)
            if nonzero:
                x[x == 0] = 1
            out.append(x)
        return out
    return make


def _bools(r, s, d):
    return [r.random(sh) < 0.5 for sh in s]


def _ties(r, s, d):
    """Few distinct values, so ties are common (argsort/argmax must pick as NumPy does)."""
    return [r.integers(0, 3, sh).astype(d) for sh in s]


def _specials(r, s, d):
    """Normal samples with NaN, +inf and -inf mixed in."""
    out = []
    for sh in s:
        x = r.standard_normal(sh)
        pick = r.random(sh)
        x = np.where(pick < 0.15, np.nan, np.where(pick < 0.3, np.inf, np.where(pick < 0.4, -np.inf, x)))
        out.append(x.astype(d))
    return out


def _near(r, s, d):
    """Values from a small set, so pairs are often equal, close (1e-4 and 1e-2 relative), far apart, NaN or inf."""
    pool = np.array([0.0, 1.0, 1.0 + 1e-4, 1.0 + 1e-2, 2.0, -1.0, np.nan, np.inf, -np.inf, 1e-9])
    return [r.choice(pool, sh).astype(d) for sh in s]


def _topk_idx_ref(a, k, axis):
    return np.take(np.argsort(-a, axis=axis, kind="stable"), np.arange(k), axis=axis)


OPS_MATH_NOGRAD: list[OpInfo] = [
    # ---- indices along every axis
    OpInfo("argmax_axis", lambda a: a.argmax(1), lambda a: np.argmax(a, 1), ((3, 4),), make=_ties, kind="axis"),
    OpInfo("argmax_flat_keepdims", lambda a: a.argmax(keepdims=True), lambda a: np.argmax(a, keepdims=True),
           ((3, 4),), make=_ties, kind="reduce"),
    OpInfo("argmin_axis", lambda a: a.argmin(-3), lambda a: np.argmin(a, -3), ((2, 3, 4),), make=_ties, kind="axis"),
    OpInfo("argsort", lambda a: a.argsort(-1), lambda a: np.argsort(a, -1, kind="stable"), ((3, 5),), make=_ties,
           kind="axis", note="stable: ties keep their order"),
    OpInfo("argsort_descending", lambda a: a.argsort(0, descending=True),
           lambda a: np.argsort(-a, 0, kind="stable"), ((5, 3),), make=_ties, kind="axis"),
    OpInfo("topk_indices", lambda a: a.topk(2, axis=1).indices, lambda a: _topk_idx_ref(a, 2, 1), ((3, 5),),
           make=_distinct, kind="axis"),
    OpInfo("sort_indices", lambda a: a.sort(0)[1], lambda a: np.argsort(a, 0, kind="stable"), ((4, 3),),
           make=_ties, kind="axis"),
    # ---- boolean reductions and tests
    OpInfo("any_axis", lambda a: (a > 1.0).any(axis=1), lambda a: (a > 1.0).any(1), ((3, 4),), kind="axis"),
    OpInfo("all", lambda a: (a > -1.5).all(), lambda a: (a > -1.5).all(), ((3, 4),), kind="reduce"),
    OpInfo("isclose", lambda a, b: a.isclose(b, rtol=1e-3, atol=1e-6),
           lambda a, b: np.isclose(a, b, rtol=1e-3, atol=1e-6), ((3, 4), (3, 4)), make=_near, kind="binary"),
    OpInfo("isclose_equal_nan", lambda a, b: mgf.isclose(a, b, equal_nan=True),
           lambda a, b: np.isclose(a, b, equal_nan=True), ((3, 4), (3, 4)), make=_near, kind="binary"),
    OpInfo("isnan", lambda a: a.isnan(), np.isnan, ((3, 4),), make=_specials),
    OpInfo("isinf", lambda a: a.isinf(), np.isinf, ((3, 4),), make=_specials),
    OpInfo("isfinite", lambda a: a.isfinite(), np.isfinite, ((3, 4),), make=_specials),
    # ---- integer arithmetic: NumPy's (and PyTorch's) sign rules
    OpInfo("floor_divide_int", lambda a, b: a // b, np.floor_divide, ((3, 4), (4,)), make=_ints(-9, 9, nonzero=True),
           kind="binary", note="floor: -5 // 3 = -2"),
    OpInfo("remainder_int", lambda a, b: a % b, np.remainder, ((3, 4), (4,)), make=_ints(-9, 9, nonzero=True),
           kind="binary", note="sign of the divisor"),
    OpInfo("fmod_int", mgf.fmod, np.fmod, ((3, 4), (4,)), make=_ints(-9, 9, nonzero=True), kind="binary",
           note="sign of the dividend"),
    OpInfo("bitwise_and", lambda a, b: a & b, np.bitwise_and, ((3, 4), (4,)), make=_ints(-50, 50), kind="binary"),
    OpInfo("bitwise_or", mgf.bitwise_or, np.bitwise_or, ((3, 4), (3, 1)), make=_ints(-50, 50), kind="binary"),
    OpInfo("bitwise_xor", lambda a, b: a ^ b, np.bitwise_xor, ((3, 4), (3, 4)), make=_ints(0, 256, np.uint8),
           kind="binary"),
    OpInfo("bitwise_not", lambda a: ~a, np.invert, ((3, 4),), make=_ints(-50, 50, np.int32)),
    OpInfo("logical_ops_on_bools", lambda a, b: (a & b) | ~(a ^ b), lambda a, b: (a & b) | ~(a ^ b),
           ((3, 4), (4,)), make=_bools, kind="binary"),
    OpInfo("left_shift", lambda a, b: a << b, np.left_shift, ((3, 4), (4,)),
           make=lambda r, s, d: [_ints(-50, 50, np.int32)(r, s[:1], d)[0], _ints(0, 8, np.int32)(r, s[1:], d)[0]],
           kind="binary"),
    OpInfo("right_shift", mgf.right_shift, np.right_shift, ((3, 4), (4,)),
           make=lambda r, s, d: [_ints(-500, 500)(r, s[:1], d)[0], _ints(0, 8)(r, s[1:], d)[0]], kind="binary",
           note="arithmetic for signed integers"),
    # ---- min/max of integers and bools (computed directly, never as -max(-x))
    OpInfo("min_int32", lambda a: a.min(axis=0), lambda a: a.min(0), ((3, 4),),
           make=lambda r, s, d: [np.concatenate([np.full((1,) + s[0][1:], -2 ** 31),
                                                 r.integers(-9, 9, (s[0][0] - 1,) + s[0][1:])]).astype(np.int32)],
           kind="axis"),
    OpInfo("min_uint8", lambda a: a.min(), np.min, ((3, 4),), make=_ints(0, 256, np.uint8), kind="reduce"),
    OpInfo("min_max_bool", lambda a: a.min(axis=1) | a.max(axis=0, keepdims=True).any(),
           lambda a: a.min(1) | a.max(0, keepdims=True).any(), ((3, 4),), make=_bools, kind="axis"),
]

OPS += OPS_MATH


BY_NAME = {op.name: op for op in OPS}
