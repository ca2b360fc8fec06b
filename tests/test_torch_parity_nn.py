"""Parity with PyTorch (optional; torch is never a dependency) for the issue-17 ops: convolution,
pooling, resampling, padding, unfold/fold, layout and indexing, normalisation, float attention masks
and grouped-query attention, and BatchNorm's running statistics. Forward values and the gradients of
every input for one random upstream gradient, in float64."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is optional: pip install torch==2.13.0 for the parity tests")
TF = torch.nn.functional

from conftest import assert_close

from minigrad import Tensor, nn
from minigrad import manipulation as M
from minigrad.nn import functional as F

ULPS = 512   # float64: the two libraries sum in different orders


def _idx(shape, n, seed=0):
    return np.random.default_rng(seed).integers(0, n, shape)


_BIAS = np.random.default_rng(7).standard_normal((1, 2, 3, 5))
_BIAS[0, 0, 1, 2] = -np.inf
_MASK = np.random.default_rng(8).random((2, 6, 5, 5)) > 0.3
_SIDX = np.array([[0, 1, 2, 0], [1, 2, 0, 1]])      # distinct targets per column: torch's scatter is defined

CASES = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
               lambda x, w, b: TF.conv2d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
               [(2, 4, 9, 8), (6, 2, 3, 3), (6,)]),
    "conv2d_same": (lambda x, w: F.conv2d(x, w, padding="same", dilation=(1, 2)),
                    lambda x, w: TF.conv2d(x, w, padding="same", dilation=(1, 2)), [(1, 3, 6, 7), (2, 3, 4, 3)]),
    "conv1d": (lambda x, w, b: F.conv1d(x, w, b, stride=3, padding=2), lambda x, w, b: TF.conv1d(x, w, b, stride=3, padding=2),
               [(2, 3, 11), (4, 3, 3), (4,)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1, 2),
                         lambda x, w, b: TF.conv_transpose2d(x, w, b, 2, 1, 1, 2), [(2, 4, 3, 4), (4, 3, 3, 3), (6,)]),
    "conv_transpose2d_dilated": (lambda x, w: F.conv_transpose2d(x, w, stride=(1, 2), padding=(0, 1), dilation=2),
                                 lambda x, w: TF.conv_transpose2d(x, w, stride=(1, 2), padding=(0, 1), dilation=2),
                                 [(1, 2, 3, 4), (2, 3, 2, 3)]),
    "conv_transpose1d": (lambda x, w: F.conv_transpose1d(x, w, stride=3, padding=1, output_padding=2),
                         lambda x, w: TF.conv_transpose1d(x, w, stride=3, padding=1, output_padding=2),
                         [(2, 2, 5), (2, 3, 4)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, (2, 3), (2, 1), dilation=(2, 1)),
                   lambda x: TF.max_pool2d(x, (2, 3), (2, 1), dilation=(2, 1)), [(2, 3, 7, 8)]),
    "max_pool2d_ceil": (lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                        lambda x: TF.max_pool2d(x, 3, 2, 1, ceil_mode=True), [(2, 3, 7, 8)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                   lambda x: TF.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [(2, 3, 7, 8)]),
    "avg_pool2d_include_pad_ceil": (lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True),
                                    lambda x: TF.avg_pool2d(x, 3, 2, 1, ceil_mode=True), [(2, 3, 7, 8)]),
    "avg_pool2d_divisor": (lambda x: F.avg_pool2d(x, 2, divisor_override=3),
                           lambda x: TF.avg_pool2d(x, 2, divisor_override=3), [(1, 2, 4, 6)]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (5, 3)), lambda x: TF.adaptive_avg_pool2d(x, (5, 3)),
                            [(2, 3, 7, 8)]),
    "adaptive_avg_pool1d": (lambda x: F.adaptive_avg_pool1d(x, 4), lambda x: TF.adaptive_avg_pool1d(x, 4),
                            [(2, 3, 10)]),
    "nearest": (lambda x: F.interpolate(x, scale_factor=(1.5, 0.7)), lambda x: TF.interpolate(x, scale_factor=(1.5, 0.7)),
                [(2, 3, 7, 8)]),
    "nearest_exact": (lambda x: F.interpolate(x, size=(3, 13), mode="nearest-exact"),
                      lambda x: TF.interpolate(x, size=(3, 13), mode="nearest-exact"), [(2, 3, 7, 8)]),
    "bilinear": (lambda x: F.interpolate(x, scale_factor=(2.5, 0.5), mode="bilinear"),
                 lambda x: TF.interpolate(x, scale_factor=(2.5, 0.5), mode="bilinear"), [(2, 3, 7, 8)]),
    "bilinear_align_corners": (lambda x: F.interpolate(x, size=(5, 11), mode="bilinear", align_corners=True),
                               lambda x: TF.interpolate(x, size=(5, 11), mode="bilinear", align_corners=True),
                               [(2, 3, 7, 8)]),
    "linear": (lambda x: F.interpolate(x, size=13, mode="linear"), lambda x: TF.interpolate(x, size=13, mode="linear"),
               [(2, 3, 7)]),
    "area": (lambda x: F.interpolate(x, size=(3, 5), mode="area"), lambda x: TF.interpolate(x, size=(3, 5), mode="area"),
             [(2, 3, 7, 8)]),
    "unfold": (lambda x: F.unfold(x, (2, 3), (1, 2), 1, (2, 1)), lambda x: TF.unfold(x, (2, 3), (1, 2), 1, (2, 1)),
               [(2, 3, 5, 6)]),
    "fold": (lambda x: F.fold(x, (5, 6), (2, 3), (1, 2), 1, (2, 1)), lambda x: TF.fold(x, (5, 6), (2, 3), (1, 2), 1, (2, 1)),
             [(2, 18, 12)]),
    "pad_constant": (lambda x: F.pad(x, (1, 2, 3, 0), value=0.5), lambda x: TF.pad(x, (1, 2, 3, 0), value=0.5),
                     [(2, 3, 4, 5)]),
    "pad_reflect": (lambda x: F.pad(x, (1, 2, 3, 0), mode="reflect"), lambda x: TF.pad(x, (1, 2, 3, 0), mode="reflect"),
                    [(2, 3, 4, 5)]),
    "pad_replicate": (lambda x: F.pad(x, (1, 2, 3, 0), mode="replicate"),
                      lambda x: TF.pad(x, (1, 2, 3, 0), mode="replicate"), [(2, 3, 4, 5)]),
    "pad_circular": (lambda x: F.pad(x, (1, 2, 3, 0), mode="circular"),
                     lambda x: TF.pad(x, (1, 2, 3, 0), mode="circular"), [(2, 3, 4, 5)]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b), lambda x, w, b: TF.group_norm(x, 2, w, b),
                   [(2, 4, 3, 2), (4,), (4,)]),
    "rms_norm": (lambda x, w: F.rms_norm(x, (3, 4), w), lambda x, w: TF.rms_norm(x, (3, 4), w), [(2, 3, 4), (3, 4)]),
    "batch_norm_train": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                         lambda x, w, b: TF.batch_norm(x, None, None, w, b, training=True), [(4, 3, 2, 2), (3,), (3,)]),
    "tril": (lambda x: M.tril(x, -1), lambda x: torch.tril(x, -1), [(2, 3, 4)]),
    "triu": (lambda x: M.triu(x, 1), lambda x: torch.triu(x, 1), [(2, 4, 3)]),
    "flip": (lambda x: M.flip(x, (0, 2)), lambda x: torch.flip(x, (0, 2)), [(2, 3, 4)]),
    "roll": (lambda x: M.roll(x, (1, -2), (0, 2)), lambda x: torch.roll(x, (1, -2), (0, 2)), [(2, 3, 4)]),
    "repeat_interleave": (lambda x: M.repeat(x, [1, 0, 3], 1),
                          lambda x: torch.repeat_interleave(x, torch.tensor([1, 0, 3]), 1), [(2, 3, 4)]),
    "tile_is_torch_repeat": (lambda x: M.tile(x, (2, 1, 3, 2)), lambda x: x.repeat(2, 1, 3, 2), [(2, 3, 4)]),
    "diagonal": (lambda x: M.diagonal(x, 1, 2, 0), lambda x: torch.diagonal(x, 1, 2, 0), [(3, 2, 4)]),
    "gather": (lambda x: M.gather(x, 1, _idx((2, 5, 4), 3)), lambda x: torch.gather(x, 1, torch.tensor(_idx((2, 5, 4), 3))),
               [(3, 3, 4)]),
    "scatter": (lambda x, s: M.scatter(x, 0, _SIDX, s), lambda x, s: torch.scatter(x, 0, torch.tensor(_SIDX), s),
                [(3, 4), (2, 4)]),
    "scatter_add": (lambda x, s: M.scatter_add(x, 1, _idx((3, 6), 4), s),
                    lambda x, s: torch.scatter_add(x, 1, torch.tensor(_idx((3, 6), 4)), s), [(3, 4), (3, 6)]),
    "index_select": (lambda x: M.index_select(x, 1, [2, 0, 2]), lambda x: torch.index_select(x, 1, torch.tensor([2, 0, 2])),
                     [(2, 3, 4)]),
    "masked_fill": (lambda x, v: M.masked_fill(x, _MASK[0, 0, :3, :4], v),
                    lambda x, v: x.masked_fill(torch.tensor(_MASK[0, 0, :3, :4]), v), [(3, 4), ()]),
    "sdpa_float_mask": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                        lambda q, k, v, m: TF.scaled_dot_product_attention(q, k, v, attn_mask=m),
                        [(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 6), (1, 2, 3, 5)]),
    "sdpa_float_mask_minus_inf": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_BIAS),
                                  lambda q, k, v: TF.scaled_dot_product_attention(q, k, v,
                                                                                  attn_mask=torch.tensor(_BIAS)),
                                  [(2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 6)]),
    "sdpa_gqa_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                        lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                        [(2, 6, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)]),
    "sdpa_gqa_bool_mask": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_MASK, enable_gqa=True),
                           lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor(_MASK),
                                                                           enable_gqa=True),
                           [(2, 6, 5, 4), (2, 3, 5, 4), (2, 3, 5, 3)]),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")     # torch's note about its own copy
@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_pytorch(name):
    fn, tfn, shapes = CASES[name]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    ms = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y, yt = fn(*ms), tfn(*ts)
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.detach().numpy(), ulps=ULPS, err_msg=name)
    g = rng.standard_normal(y.shape)
    y.backward(Tensor(g))
    yt.backward(torch.tensor(g))
    for i, (m, t) in enumerate(zip(ms, ts)):
        assert_close(m.grad, t.grad.numpy(), ulps=ULPS, err_msg=f"{name}: gradient of input {i}")


def test_batchnorm_running_statistics_match_pytorch_over_train_and_eval():
    rng = np.random.default_rng(1)
    for momentum in (0.1, None):
        ours = nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
        theirs = torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
        for _ in range(3):
            x = rng.standard_normal((4, 3, 2, 3)) * 3 + 1
            assert_close(ours(Tensor(x)), theirs(torch.tensor(x)).detach().numpy(), ulps=ULPS)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert_close(getattr(ours, name).numpy(), getattr(theirs, name).numpy(), ulps=ULPS, err_msg=name)
        x = rng.standard_normal((2, 3, 2, 2))
        assert_close(ours.eval()(Tensor(x)), theirs.eval()(torch.tensor(x)).detach().numpy(), ulps=ULPS)


def test_conv_layers_loaded_with_pytorch_weights_agree():
    rng = np.random.default_rng(2)
    theirs = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", dtype=torch.float64)
    ours = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect", dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((2, 4, 7, 6))
    assert_close(ours(Tensor(x)), theirs(torch.tensor(x)).detach().numpy(), ulps=ULPS)
    theirs_t = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, dtype=torch.float64)
    ours_t = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, dtype=np.float64)
    ours_t.load_state_dict({k: v.detach().numpy() for k, v in theirs_t.state_dict().items()})
    assert_close(ours_t(Tensor(x)), theirs_t(torch.tensor(x)).detach().numpy(), ulps=ULPS)
