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
      third_derivative                 (gradcheck, gradgradcheck) bounds on |f'''| of the function checked
                                       near the samples, for ``tolerances`` (gradient_check.float64_tolerances);
                                       the default 1e3 suits inputs and outputs of order one
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import functions as mgf
from .gradient_check import float64_tolerances
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
    third_derivative: tuple = (1e3, 1e3)

    def tolerances(self, tensors, order=1):
        """float64's own gradcheck (order 1) or gradgradcheck (order 2) tolerances for this op at ``tensors``."""
        return float64_tolerances(self.fn, tensors, order=order, third_derivative=self.third_derivative[order - 1])

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


def _qkv_ref(qkv, n_head=2, causal=True, scale=None):
    """The packed (B, T, 3E) projection split into q, k, v and heads, attended, heads put back."""
    b, t, e3 = qkv.shape
    hs = e3 // 3 // n_head
    h = qkv.reshape(b, t, 3, n_head, hs).transpose(2, 0, 3, 1, 4)            # (3, B, nh, T, hs)
    q = h[0] if scale is None else h[0] * (scale * math.sqrt(hs))            # _sdpa_ref scales by 1/sqrt(hs)
    return _sdpa_ref(q, h[1], h[2], causal).transpose(0, 2, 1, 3).reshape(b, t, e3 // 3)


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


def _off_origin(rng, shapes, dtype):
    """|y|, |x| in [0.5, 2]: atan2's derivatives grow as 1/r^k near the origin (its third as 2/r^3, past
    the default bound inside r = 0.13) and it jumps across y = 0 for x < 0."""
    return [(rng.uniform(0.5, 2.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype) for s in shapes]


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
    OpInfo("atan2", mgf.atan2, np.arctan2, ((3, 4), (4,)), kind="binary", make=_off_origin),
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
           hypothesis=False,
           # p, t in [0.05, 0.95], n = 12, L linear in t: |d3L/dp3| <= (2/n) t/p^3 <= 1.3e3. The first-order
           # gradient v dL/dp (v the drawn grad_output, |v| < 4) has |d3/dp3| = (6|v|/n) (t/p^4 + (1-t)/(1-p)^4)
           # <= 7.6e4 |v| < 3.1e5 near p = 0.05, where the default 1e3 fails for half the seeds
           third_derivative=(1.3e3, 3.1e5)),
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


# ====================================================================== issue 17: convolution, pooling, layout,
# indexing, normalisation and attention masks. Kinds conv | pool | layout | index | norm draw their shapes in
# tests/test_shapes_hypothesis_nn.py; index arrays and masks come from the input shapes (seeded), so drawn
# shapes get valid ones. The references are direct loops over output positions in NumPy.
from . import manipulation as M


def _pairs(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def _conv_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Each output position as a tensordot of its window with the group's weights."""
    nd = x.ndim - 2
    stride, dilation, kernel = _pairs(stride, nd), _pairs(dilation, nd), w.shape[2:]
    if padding == "same":
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)]
    else:
        pads = [(p, p) for p in _pairs(padding, nd)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    out = tuple((xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(nd))
    if any(o < 1 for o in out):
        raise ValueError("empty convolution output")
    n, c, o = x.shape[0], x.shape[1], w.shape[0]
    cg, og = c // groups, o // groups
    y = np.zeros((n, o) + out, dtype=np.result_type(x, w))
    axes = list(range(1, nd + 2))
    for pos in np.ndindex(*out):
        win = xp[(slice(None), slice(None)) + tuple(slice(p * s, p * s + d * (k - 1) + 1, d)
                                                    for p, s, d, k in zip(pos, stride, dilation, kernel))]
        for g in range(groups):
            y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = np.tensordot(
                win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], axes=(axes, axes))
    return y if b is None else y + b.reshape((o,) + (1,) * nd)


def _conv_transpose_ref(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Each input position adds its channels' combination of w onto its output window; then the padding is cut."""
    nd = x.ndim - 2
    stride, padding, dilation = _pairs(stride, nd), _pairs(padding, nd), _pairs(dilation, nd)
    output_padding, kernel = _pairs(output_padding, nd), w.shape[2:]
    n, cin, cog = x.shape[0], x.shape[1], w.shape[1]
    cig = cin // groups
    full = tuple((sz - 1) * s + d * (k - 1) + 1 + op for sz, s, d, k, op in
                 zip(x.shape[2:], stride, dilation, kernel, output_padding))
    y = np.zeros((n, cog * groups) + full, dtype=np.result_type(x, w))
    for pos in np.ndindex(*x.shape[2:]):
        at = tuple(slice(p * s, p * s + d * (k - 1) + 1, d) for p, s, d, k in zip(pos, stride, dilation, kernel))
        for g in range(groups):
            y[(slice(None), slice(g * cog, (g + 1) * cog)) + at] += np.tensordot(
                x[(slice(None), slice(g * cig, (g + 1) * cig)) + pos], w[g * cig:(g + 1) * cig], axes=(1, 0))
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(padding, full))]
    if min(y.shape[2:]) < 1 or min(x.shape[2:]) < 1:
        raise ValueError("empty transposed-convolution input or output")
    return y if b is None else y + b.reshape((-1,) + (1,) * nd)


def _pool_ref(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, op="max", count_include_pad=True):
    """Max or mean over the in-bounds elements of each window (PyTorch's output size and divisor rules)."""
    nd = x.ndim - 2
    if min(x.shape[2:]) < 1:
        raise ValueError("pooling an empty image")
    kernel = _pairs(kernel, nd)
    stride = kernel if stride is None else _pairs(stride, nd)
    padding, dilation = _pairs(padding, nd), _pairs(dilation, nd)
    out = []
    for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation):
        span = n + 2 * p - d * (k - 1) - 1
        o = (-(-span // s) + 1 if ceil_mode else span // s + 1)
        if ceil_mode and (o - 1) * s >= n + p:
            o -= 1
        out.append(o)
    if any(o < 1 for o in out):
        raise ValueError("empty pooling output")
    y = np.zeros(x.shape[:2] + tuple(out), dtype=x.dtype)
    for pos in np.ndindex(*out):
        idx, div = [], 1
        for q, n, k, s, p, d in zip(pos, x.shape[2:], kernel, stride, padding, dilation):
            start = q * s - p
            at = start + np.arange(k) * d
            idx.append(at[(at >= 0) & (at < n)])
            div *= (min(start + k, n + p) - start) if count_include_pad else len(idx[-1])
        win = x[(slice(None), slice(None)) + np.ix_(*idx)].reshape(x.shape[:2] + (math.prod(map(len, idx)),))
        y[(slice(None), slice(None)) + pos] = win.max(-1) if op == "max" else win.sum(-1) / div
    return y


def _adaptive_ref(x, out):
    nd = x.ndim - 2
    out = _pairs(out, nd)
    y = np.zeros(x.shape[:2] + out, dtype=x.dtype)
    for pos in np.ndindex(*out):
        at = tuple(slice(i * n // o, -(-(i + 1) * n // o)) for i, n, o in zip(pos, x.shape[2:], out))
        y[(slice(None), slice(None)) + pos] = x[(slice(None), slice(None)) + at].mean(axis=tuple(range(2, 2 + nd)))
    return y


def _interp_ref(x, size, mode, align_corners=False):
    """Nearest: source floor(dst · in/out) in float32. Linear modes: every output element as the weighted
    sum over the 2^nd corners of its source cell."""
    nd = x.ndim - 2
    size = _pairs(size, nd)
    y = np.zeros(x.shape[:2] + size, dtype=x.dtype)
    for pos in np.ndindex(*size):
        if mode == "nearest":
            src = tuple(min(int(np.floor(np.float32(q) * np.float32(n / o))), n - 1)
                        for q, n, o in zip(pos, x.shape[2:], size))
            y[(slice(None), slice(None)) + pos] = x[(slice(None), slice(None)) + src]
            continue
        corners = []
        for q, n, o in zip(pos, x.shape[2:], size):
            f = q * (n - 1) / (o - 1) if align_corners and o > 1 else 0.0 if align_corners \
                else max((q + 0.5) * n / o - 0.5, 0.0)
            i0 = min(int(np.floor(f)), n - 1)
            corners.append(((i0, 1.0 - (f - i0)), (min(i0 + 1, n - 1), f - i0)))
        for combo in itertools.product(*corners):
            wgt = np.prod([c[1] for c in combo])
            y[(slice(None), slice(None)) + pos] += wgt * x[(slice(None), slice(None)) + tuple(c[0] for c in combo)]
    return y


def _unfold_ref(x, kernel, dilation, padding, stride):
    k, d, p, s = (_pairs(v, 2) for v in (kernel, dilation, padding, stride))
    xp = np.pad(x, [(0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])])
    out = [(xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    if min(out) < 1:
        raise ValueError("empty unfold output")
    cols = [xp[:, :, i * s[0]:i * s[0] + d[0] * (k[0] - 1) + 1:d[0], j * s[1]:j * s[1] + d[1] * (k[1] - 1) + 1:d[1]]
            .reshape(x.shape[0], x.shape[1] * k[0] * k[1]) for i in range(out[0]) for j in range(out[1])]
    return np.stack(cols, axis=-1)


def _fold_ref(cols, size, kernel, dilation, padding, stride):
    k, d, p, s = (_pairs(v, 2) for v in (kernel, dilation, padding, stride))
    n = cols.shape[0]
    c = cols.shape[1] // (k[0] * k[1])
    out = [(size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2)]
    y = np.zeros((n, c, size[0] + 2 * p[0], size[1] + 2 * p[1]), dtype=cols.dtype)
    for col, (i, j) in enumerate(itertools.product(range(out[0]), range(out[1]))):
        y[:, :, i * s[0]:i * s[0] + d[0] * (k[0] - 1) + 1:d[0], j * s[1]:j * s[1] + d[1] * (k[1] - 1) + 1:d[1]] += \
            cols[:, :, col].reshape(n, c, k[0], k[1])
    return y[:, :, p[0]:p[0] + size[0], p[1]:p[1] + size[1]]


def _np_pad(x, pad, mode, value=0.0):
    """F.pad's (last dim first) pads through numpy.pad."""
    width = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        width[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    if mode == "constant":
        return np.pad(x, width, constant_values=value)
    return np.pad(x, width, mode={"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode])


def _rand_index(shape, n, seed=0):
    """A seeded integer array of ``shape`` with entries in [0, n): an index fitting drawn shapes."""
    return np.random.default_rng(seed).integers(0, max(n, 1), shape)


def _rand_mask(shape, seed=0):
    return np.random.default_rng(seed).random(shape) > 0.4


def _gather_index(x_shape, dim=1, extra=1):
    """An index for gather along ``dim``: one more entry than x along dim, one less elsewhere (>= 0)."""
    shape = tuple(n + extra if d == dim else max(n - 1, 0) for d, n in enumerate(x_shape))
    return _rand_index(shape, x_shape[dim], seed=len(x_shape))


def _gather_ref(x, dim, idx):
    return np.take_along_axis(x[tuple(slice(0, n) if d != dim else slice(None) for d, n in enumerate(idx.shape))],
                              idx, dim)


def _scatter_ref(x, dim, idx, src, add=False):
    """Sources in C order; a later one overwrites (or adds to) an earlier one at the same target."""
    out = x.copy()
    for pos in np.ndindex(*idx.shape):
        at = list(pos)
        at[dim] = idx[pos]
        if add:
            out[tuple(at)] += src[pos]
        else:
            out[tuple(at)] = src[pos]
    return out


def _scatter_index(x_shape, dim, cols):
    """(x.shape[dim] + 1, cols) targets along dim (so some repeat), cols <= the other dim of x."""
    return _rand_index((x_shape[dim] + 1, min(cols, x_shape[1 - dim])) if dim == 0 else
                       (min(cols, x_shape[0]), x_shape[dim] + 2), x_shape[dim], seed=3)


def _bn_ref(x, w, b, mean=None, var=None, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if mean is None:
        mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    else:
        mean, var = mean.reshape(shape), var.reshape(shape)
    return (x - mean) / np.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)


def _gn_ref(x, groups, w, b, eps=1e-5):
    g = x.reshape(x.shape[0], groups, x.shape[1] // groups * math.prod(x.shape[2:]))
    y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return y * w.reshape(shape) + b.reshape(shape)


def _running(c):
    """Fixed running statistics for channel count c (eval-mode batch norm)."""
    return np.linspace(-0.5, 0.5, c), np.linspace(0.5, 2.0, c)


def _sdpa_bias_ref(q, k, v, bias, causal=False):
    """softmax(q kᵀ / sqrt(d) + bias) v, -inf entries masked; causal bottom-right."""
    s = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]) + bias
    tq, tk = s.shape[-2:]
    if causal:
        s = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq), s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))
    d = e.sum(-1, keepdims=True)
    return (e / np.where(d > 0, d, 1)) @ v


_GQA_BIAS = np.where(np.eye(2, 4, 2, dtype=bool), -np.inf, np.linspace(-1, 1, 8).reshape(2, 4))   # (Tq, Tk)


def _gqa_ref(q, k, v):
    g = q.shape[1] // k.shape[1]
    return _sdpa_bias_ref(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), _GQA_BIAS, causal=True)


OPS_NN: list[OpInfo] = [
    # ---- convolution (im2col + matmul; backward through col2im)
    OpInfo("conv1d", lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, groups=2),
           lambda x, w, b: _conv_ref(x, w, b, 2, 1, 1, 2), ((2, 4, 5), (4, 2, 3), (4,)), kind="conv"),
    OpInfo("conv1d_same_even_kernel", lambda x, w: F.conv1d(x, w, padding="same"),
           lambda x, w: _conv_ref(x, w, padding="same"), ((1, 2, 6), (3, 2, 4)), kind="conv",
           note="'same' with an even kernel pads one more on the high side"),
    OpInfo("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda x, w, b: _conv_ref(x, w, b, 1, 1),
           ((2, 2, 3, 3), (2, 2, 3, 3), (2,)), kind="conv"),
    OpInfo("conv2d_groups_dilated",
           lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2),
           lambda x, w, b: _conv_ref(x, w, b, (2, 1), (1, 0), (2, 1), 2), ((1, 4, 5, 4), (2, 2, 2, 3), (2,)),
           kind="conv"),
    OpInfo("conv2d_same_dilated", lambda x, w: F.conv2d(x, w, padding="same", dilation=(1, 2)),
           lambda x, w: _conv_ref(x, w, padding="same", dilation=(1, 2)), ((1, 2, 4, 5), (2, 2, 2, 3)), kind="conv"),
    OpInfo("conv_transpose1d", lambda x, w: F.conv_transpose1d(x, w, stride=2, padding=1),
           lambda x, w: _conv_transpose_ref(x, w, None, 2, 1), ((2, 2, 4), (2, 3, 3)), kind="conv"),
    OpInfo("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
           lambda x, w, b: _conv_transpose_ref(x, w, b, 2, 1, 1), ((1, 2, 2, 3), (2, 2, 3, 3), (2,)), kind="conv"),
    OpInfo("conv_transpose2d_groups",
           lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), groups=2, dilation=2),
           lambda x, w: _conv_transpose_ref(x, w, None, (1, 2), 0, 0, 2, 2), ((1, 4, 3, 2), (4, 1, 2, 2)),
           kind="conv"),
    OpInfo("unfold", lambda x: F.unfold(x, (2, 3), padding=1, stride=2), lambda x: _unfold_ref(x, (2, 3), 1, 1, 2),
           ((1, 2, 4, 5),), kind="conv"),
    OpInfo("fold", lambda x: F.fold(x, (4, 5), (2, 3), padding=1, stride=2),
           lambda x: _fold_ref(x, (4, 5), (2, 3), 1, 1, 2), ((1, 12, 9),), kind="conv",
           note="overlapping windows add"),
    # ---- pooling and resampling
    OpInfo("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: _pool_ref(x, 3, 2, 1), ((1, 2, 5, 5),),
           make=_distinct, kind="pool", note="overlapping windows route to their argmax"),
    OpInfo("max_pool2d_dilated_ceil", lambda x: F.max_pool2d(x, (2, 3), 2, dilation=(2, 1), ceil_mode=True),
           lambda x: _pool_ref(x, (2, 3), 2, 0, (2, 1), True), ((1, 2, 6, 7),), make=_distinct, kind="pool"),
    OpInfo("max_pool1d", lambda x: F.max_pool1d(x, 3, 2), lambda x: _pool_ref(x, 3, 2), ((2, 2, 7),), make=_distinct,
           kind="pool"),
    OpInfo("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: _pool_ref(x, 3, 2, 1, op="avg"),
           ((1, 2, 5, 5),), kind="pool"),
    OpInfo("avg_pool2d_ceil_no_pad",
           lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
           lambda x: _pool_ref(x, 3, 2, 1, ceil_mode=True, op="avg", count_include_pad=False), ((1, 2, 6, 5),),
           kind="pool"),
    OpInfo("avg_pool1d", lambda x: F.avg_pool1d(x, 2, 1, 1), lambda x: _pool_ref(x, 2, 1, 1, op="avg"),
           ((2, 2, 5),), kind="pool"),
    OpInfo("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 4)), lambda x: _adaptive_ref(x, (3, 4)),
           ((1, 1, 5, 7),), kind="pool", note="windows of uneven sizes"),
    OpInfo("adaptive_avg_pool1d", lambda x: F.adaptive_avg_pool1d(x, 3), lambda x: _adaptive_ref(x, 3),
           ((2, 2, 7),), kind="pool"),
    OpInfo("interpolate_nearest", lambda x: F.interpolate(x, size=(5, 7)), lambda x: _interp_ref(x, (5, 7), "nearest"),
           ((1, 2, 3, 4),), kind="pool", note="repeated sources accumulate in backward"),
    OpInfo("interpolate_bilinear", lambda x: F.interpolate(x, size=(3, 5), mode="bilinear"),
           lambda x: _interp_ref(x, (3, 5), "linear"), ((1, 2, 4, 3),), kind="pool"),
    OpInfo("bilinear_align_corners",
           lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=True),
           lambda x: _interp_ref(x, (5, 7), "linear", True), ((1, 1, 3, 4),), kind="pool"),
    OpInfo("interpolate_linear", lambda x: F.interpolate(x, size=8, mode="linear"),
           lambda x: _interp_ref(x, 8, "linear"), ((2, 2, 5),), kind="pool"),
    # ---- layout
    OpInfo("pad_constant", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), lambda x: _np_pad(x, (1, 2, 0, 1), "constant", 0.5),
           ((2, 3, 4),), kind="layout"),
    OpInfo("pad_reflect", lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"),
           lambda x: _np_pad(x, (2, 1, 1, 2), "reflect"), ((2, 3, 4),), kind="layout"),
    OpInfo("pad_replicate", lambda x: F.pad(x, (1, 2, 2, 0), mode="replicate"),
           lambda x: _np_pad(x, (1, 2, 2, 0), "replicate"), ((1, 2, 3, 4),), kind="layout"),
    OpInfo("pad_circular", lambda x: F.pad(x, (1, 3), mode="circular"), lambda x: _np_pad(x, (1, 3), "circular"),
           ((2, 3, 4),), kind="layout"),
    OpInfo("tril", lambda x: M.tril(x, -1), lambda x: np.tril(x, -1), ((2, 3, 4),), kind="layout"),
    OpInfo("triu", lambda x: M.triu(x, 1), lambda x: np.triu(x, 1), ((3, 4),), kind="layout"),
    OpInfo("flip", lambda x: M.flip(x, (0, 2)), lambda x: np.flip(x, (0, 2)), ((2, 3, 4),), kind="layout"),
    OpInfo("roll", lambda x: M.roll(x, (1, -2), (0, 2)), lambda x: np.roll(x, (1, -2), (0, 2)), ((2, 3, 4),),
           kind="layout"),
    OpInfo("roll_flat", lambda x: M.roll(x, 5), lambda x: np.roll(x, 5), ((3, 4),), kind="layout"),
    OpInfo("repeat", lambda x: M.repeat(x, 2, 1), lambda x: np.repeat(x, 2, 1), ((2, 3),), kind="layout"),
    OpInfo("repeat_counts", lambda x: M.repeat(x, np.arange(x.shape[0]) % 3, 0),
           lambda x: np.repeat(x, np.arange(x.shape[0]) % 3, 0), ((4, 2),), kind="layout",
           note="counts 0, 1, 2, 0: a row dropped, one repeated"),
    OpInfo("tile", lambda x: M.tile(x, (2, 1, 2)), lambda x: np.tile(x, (2, 1, 2)), ((2, 3),), kind="layout"),
    OpInfo("meshgrid", lambda a, b: mgf.stack(M.meshgrid(a, b)), lambda a, b: np.stack(np.meshgrid(a, b)),
           ((3,), (4,)), kind="layout", note="indexing='xy' (NumPy's default)"),
    OpInfo("diagonal", lambda x: M.diagonal(x, 1, 2, 0), lambda x: np.diagonal(x, 1, 2, 0), ((3, 4, 5),),
           kind="layout"),
    OpInfo("trace", lambda x: M.trace(x, -1), lambda x: np.trace(x, -1), ((4, 3),), kind="layout"),
    # ---- indexing (index arrays and masks derived from the input shape, seeded)
    OpInfo("gather", lambda x: M.gather(x, 1, _gather_index(x.shape)),
           lambda x: _gather_ref(x, 1, _gather_index(x.shape)), ((3, 4, 2),), kind="index",
           note="index longer than x along dim, shorter elsewhere; repeats accumulate"),
    OpInfo("scatter", lambda x, s: M.scatter(x, 0, _scatter_index(x.shape, 0, 3), s),
           lambda x, s: _scatter_ref(x, 0, _scatter_index(x.shape, 0, 3), s), ((4, 3), (5, 3)), kind="index",
           note="repeated targets: the last source wins, the others get no gradient; src larger than index"),
    OpInfo("scatter_add", lambda x, s: M.scatter_add(x, 1, _scatter_index(x.shape, 1, 3), s),
           lambda x, s: _scatter_ref(x, 1, _scatter_index(x.shape, 1, 3), s, add=True), ((3, 4), (3, 6)),
           kind="index", note="repeated targets accumulate"),
    OpInfo("take_along_axis", lambda x: M.take_along_axis(x, _rand_index((1, 5), x.shape[1]), 1),
           lambda x: np.take_along_axis(x, _rand_index((1, 5), x.shape[1]), 1), ((3, 4),), kind="index",
           note="indices broadcast against x outside the axis"),
    OpInfo("index_select", lambda x: M.index_select(x, 0, _rand_index(6, x.shape[0])),
           lambda x: np.take(x, _rand_index(6, x.shape[0]), 0), ((3, 4),), kind="index"),
    OpInfo("masked_fill", lambda x: M.masked_fill(x, _rand_mask((1,) + x.shape[1:]), 2.5),
           lambda x: np.where(_rand_mask((1,) + x.shape[1:]), 2.5, x), ((3, 4),), kind="index",
           note="the mask broadcasts"),
    OpInfo("masked_fill_tensor_value", lambda x, v: M.masked_fill(x, _rand_mask(x.shape), v),
           lambda x, v: np.where(_rand_mask(x.shape), v, x), ((3, 4), ()), kind="index",
           note="a 0-d tensor value gets the masked positions' gradient"),
    OpInfo("getitem_bool_mask", lambda x: x[mgf.tensor(_rand_mask(x.shape[:2]))], lambda x: x[_rand_mask(x.shape[:2])],
           ((3, 4, 2),), kind="index", note="a boolean Tensor over the leading dims"),
    # ---- normalisation (Tensor-op compositions)
    OpInfo("batch_norm_train", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), _bn_ref,
           ((4, 3, 2), (3,), (3,)), kind="norm", note="the batch's statistics"),
    OpInfo("batch_norm_eval", lambda x, w, b: F.batch_norm(x, *_running(x.shape[1]), w, b),
           lambda x, w, b: _bn_ref(x, w, b, *_running(x.shape[1])), ((3, 2, 4), (2,), (2,)), kind="norm",
           note="fixed running statistics"),
    OpInfo("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), lambda x, w, b: _gn_ref(x, 2, w, b),
           ((2, 4, 3), (4,), (4,)), kind="norm"),
    OpInfo("rms_norm", lambda x, w: F.rms_norm(x, (4,), w),
           lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + np.finfo(x.dtype).eps) * w, ((2, 3, 4), (4,)),
           kind="norm"),
    # ---- attention: a float additive mask and grouped-query attention (the reference op runs them)
    OpInfo("sdpa_float_mask", lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
           lambda q, k, v, m: _sdpa_bias_ref(q, k, v, m), ((1, 2, 2, 3), (1, 2, 4, 3), (1, 2, 4, 2), (1, 1, 2, 4)),
           kind="nn", hypothesis=False, note="the mask is differentiable and broadcasts over heads"),
    OpInfo("sdpa_gqa", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_GQA_BIAS, is_causal=True,
                                                                       enable_gqa=True),
           _gqa_ref, ((1, 4, 2, 3), (1, 2, 4, 3), (1, 2, 4, 3)), kind="nn", hypothesis=False,
           note="4 query heads over 2 key/value heads, causal, a float mask with -inf"),
]
OPS += OPS_NN


OPS += [
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
