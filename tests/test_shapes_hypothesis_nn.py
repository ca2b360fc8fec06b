"""Hypothesis-drawn shapes for the issue-17 registry entries (minigrad.opinfo.OPS_NN) of kinds conv,
pool, layout, index and norm: convolution and pooling over drawn batch, channel, kernel and image
sizes (empty batches and images too small for the window included), padding and layout ops on
drawn ranks, gathers and scatters whose index arrays follow the drawn shapes.

Each case runs tests/test_shapes_hypothesis.check_case: the forward against the NumPy reference
(or the same error class where the reference refuses the shapes), every gradient's shape, zero
gradients for an empty output, and gradcheck (its fast directional mode for larger cases).
"""
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the shape tests need the 'hypothesis' dev dependency")
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_shapes_hypothesis import check_case

from minigrad.opinfo import OPS_NN

KINDS = ("conv", "pool", "layout", "index", "norm")
I = st.integers


def _any(min_dims=0, max_dims=3, min_side=0, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def _conv(nd, groups=1, bias=True, img=(0, 6)):
    """x (N, C, *S), w (O, C/groups, *K)[, b (O,)] with C and O multiples of groups."""
    def build(n, cg, og, k, s):
        x = (n, cg * groups) + tuple(s)
        w = (og * groups, cg) + tuple(k)
        return (x, w, (og * groups,)) if bias else (x, w)
    return st.builds(build, I(0, 2), I(1, 2), I(0, 2), st.lists(I(1, 3), min_size=nd, max_size=nd),
                     st.lists(I(*img), min_size=nd, max_size=nd))


def _conv_t(nd, groups=1, bias=False):
    """x (N, Cin, *S), w (Cin, Cout/groups, *K)[, b (Cout,)]."""
    def build(n, cg, og, k, s):
        x = (n, cg * groups) + tuple(s)
        w = (cg * groups, og) + tuple(k)
        return (x, w, (og * groups,)) if bias else (x, w)
    return st.builds(build, I(0, 2), I(1, 2), I(0, 2), st.lists(I(1, 3), min_size=nd, max_size=nd),
                     st.lists(I(0, 4), min_size=nd, max_size=nd))


def _image(nd, lo=0, hi=7):
    return st.builds(lambda n, c, s: ((n, c) + tuple(s),), I(0, 2), I(0, 2), st.lists(I(lo, hi), min_size=nd, max_size=nd))


def _with_channels(x_rank, trailing=2):
    """(x, w (C,), b (C,)) with x (N, C, ...)."""
    return _any(x_rank, x_rank, 0, 4).map(lambda s: (s, (s[1],), (s[1],))[:1 + trailing])


STRATEGIES = {
    "conv1d": _conv(1, groups=2),
    "conv1d_same_even_kernel": _conv(1, bias=False),
    "conv2d": _conv(2),
    "conv2d_groups_dilated": _conv(2, groups=2),
    "conv2d_same_dilated": _conv(2, bias=False),
    "conv_transpose1d": _conv_t(1),
    "conv_transpose2d": _conv_t(2, bias=True),
    "conv_transpose2d_groups": _conv_t(2, groups=2),
    "unfold": _image(2),
    "fold": st.builds(lambda n, c: ((n, 6 * c, 9),), I(0, 2), I(0, 2)),
    "max_pool2d": _image(2),
    "max_pool2d_dilated_ceil": _image(2),
    "max_pool1d": _image(1),
    "avg_pool2d": _image(2),
    "avg_pool2d_ceil_no_pad": _image(2),
    "avg_pool1d": _image(1),
    "adaptive_avg_pool2d": _image(2, lo=1),
    "adaptive_avg_pool1d": _image(1, lo=1),
    "interpolate_nearest": _image(2, lo=1, hi=5),
    "interpolate_bilinear": _image(2, lo=1, hi=5),
    "bilinear_align_corners": _image(2, lo=1, hi=5),
    "interpolate_linear": _image(1, lo=1, hi=6),
    "pad_constant": _any(2, 4).map(lambda s: (s,)),
    "pad_reflect": _any(2, 4).map(lambda s: (s,)),
    "pad_replicate": _any(2, 4).map(lambda s: (s,)),
    "pad_circular": _any(1, 3).map(lambda s: (s,)),
    "tril": _any(2, 4).map(lambda s: (s,)),
    "triu": _any(2, 4).map(lambda s: (s,)),
    "flip": _any(3, 3).map(lambda s: (s,)),
    "roll": _any(3, 4).map(lambda s: (s,)),
    "roll_flat": _any(0, 3).map(lambda s: (s,)),
    "repeat": _any(2, 3).map(lambda s: (s,)),
    "repeat_counts": _any(1, 3).map(lambda s: (s,)),
    "tile": _any(0, 3).map(lambda s: (s,)),
    "meshgrid": st.tuples(I(0, 4), I(0, 4)).map(lambda ab: ((ab[0],), (ab[1],))),
    "diagonal": _any(3, 4).map(lambda s: (s,)),
    "trace": _any(2, 2).map(lambda s: (s,)),
    "gather": _any(3, 3, 0, 4).filter(lambda s: s[1] > 0).map(lambda s: (s,)),
    "scatter": st.builds(lambda s, a, b: (s, (s[0] + 1 + a, min(3, s[1]) + b)), _any(2, 2, 0, 4), I(0, 1), I(0, 1)),
    "scatter_add": st.builds(lambda s, a, b: (s, (min(3, s[0]) + a, s[1] + 2 + b)), _any(2, 2, 0, 4), I(0, 1),
                             I(0, 1)),
    "take_along_axis": _any(2, 2, 0, 4).filter(lambda s: s[1] > 0).map(lambda s: (s,)),
    "index_select": _any(1, 3, 0, 4).filter(lambda s: s[0] > 0).map(lambda s: (s,)),
    "masked_fill": _any(1, 3).map(lambda s: (s,)),
    "masked_fill_tensor_value": _any(0, 3).map(lambda s: (s, ())),
    "getitem_bool_mask": _any(2, 4).map(lambda s: (s,)),
    "batch_norm_train": _with_channels(3).filter(lambda t: t[0][0] * t[0][2] >= 2),
    "batch_norm_eval": _with_channels(3),
    "group_norm": st.builds(lambda n, g, l: ((n, 2 * g, l), (2 * g,), (2 * g,)), I(0, 2), I(1, 2), I(0, 3)),
    "rms_norm": _any(0, 2).map(lambda s: (s + (4,), (4,))),
}

HYP = [op for op in OPS_NN if op.hypothesis and op.kind in KINDS]


def test_every_drawn_entry_has_a_strategy():
    assert len(HYP) >= 45
    assert {op.name for op in HYP} <= set(STRATEGIES), sorted({op.name for op in HYP} - set(STRATEGIES))
    assert set(STRATEGIES) <= {op.name for op in HYP}, "a strategy for an entry that is gone"


@pytest.mark.parametrize("op", HYP, ids=[op.name for op in HYP])
@settings(max_examples=25)
@given(data=st.data())
def test_drawn_shapes_forward_and_gradients(op, data):
    shapes = data.draw(STRATEGIES[op.name], label="shapes")
    seed = data.draw(I(0, 2 ** 16), label="seed")
    check_case(op, shapes, seed)
