"""Convolution, pooling, resampling, unfold/fold and pad: semantics the registry entries cannot state
(adjointness, tie routing, NaN, unbatched inputs, dtypes, determinism) and the errors for bad input.
Values and both derivative orders against NumPy references are the registry's (minigrad.opinfo.OPS_NN)."""
import numpy as np
import pytest
from conftest import assert_close, tol

import minigrad as mg
from minigrad import Tensor
from minigrad.nn import functional as F
from minigrad.ops.conv import col2im, im2col


def T(a, grad=False):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


@pytest.mark.parametrize("kernel, stride, dilation, pads", [
    ((3,), (2,), (1,), ((1, 1),)),
    ((2, 3), (1, 2), (2, 1), ((0, 1), (2, 0))),
    ((3, 3), (2, 2), (1, 1), ((1, 1), (1, 1))),
])
def test_col2im_is_the_adjoint_of_im2col(kernel, stride, dilation, pads):
    """<im2col(x), c> = <x, col2im(c)> for every x and c: the windows' overlaps add back exactly."""
    rng = np.random.default_rng(0)
    size = (7,) if len(kernel) == 1 else (6, 7)
    x = rng.standard_normal((2, 3) + size)
    cols = im2col(x, kernel, stride, dilation, pads)
    c = rng.standard_normal(cols.shape)
    back = col2im(c, size, kernel, stride, dilation, pads)
    assert back.shape == x.shape
    rtol, atol = tol(np.float64, ulps=8 * c.size)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=rtol, atol=atol)


def test_col2im_adds_overlaps_like_add_at():
    rng = np.random.default_rng(1)
    kernel, stride, dilation, pads, size = (3, 2), (1, 1), (1, 2), ((1, 1), (0, 1)), (4, 5)
    c = rng.standard_normal(im2col(np.zeros((1, 2) + size), kernel, stride, dilation, pads).shape)
    want = np.zeros((1, 2, 6, 6))
    for i in range(3):
        for j in range(2):
            for p in range(c.shape[4]):
                for q in range(c.shape[5]):
                    np.add.at(want, (slice(None), slice(None), p + i, q + 2 * j), c[:, :, i, j, p, q])
    assert_close(col2im(c, size, kernel, stride, dilation, pads), want[:, :, 1:5, 0:5])


def test_max_pool_routes_a_tied_window_to_its_first_maximum_and_sums_overlaps():
    x = T(np.ones((1, 1, 3, 3)), grad=True)
    y = F.max_pool2d(x, 2, stride=1)                         # 4 overlapping windows, all tied
    assert y.numpy().tolist() == [[[[1.0, 1.0], [1.0, 1.0]]]]
    y.backward(T(np.array([[[[1.0, 2.0], [3.0, 4.0]]]])))
    # each window's first (top-left) element takes its gradient (PyTorch's choice)
    assert x.grad.numpy()[0, 0].tolist() == [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]


def test_max_pool_propagates_nan_and_padding_never_wins():
    x = np.full((1, 1, 2, 2), -5.0)
    x[0, 0, 1, 1] = np.nan
    y = F.max_pool2d(T(x), 2, stride=1, padding=1).numpy()[0, 0]
    assert np.isnan(y[1:, 1:]).all() and np.all(y[:1] == -5.0) and np.all(y[:, :1] == -5.0)


def test_max_pool_takes_integer_images():
    x = Tensor(np.arange(16, dtype=np.int64).reshape(1, 1, 4, 4) - 100)
    y = F.max_pool2d(x, 3, 2, 1)
    assert y.dtype == np.int64 and y.numpy()[0, 0].tolist() == [[-95, -93], [-87, -85]]


@pytest.mark.parametrize("fn", [
    lambda x: F.conv2d(x, T(np.ones((4, 3, 2, 2))), stride=2),
    lambda x: F.conv_transpose2d(x, T(np.ones((3, 2, 2, 2))), stride=2),
    lambda x: F.max_pool2d(x, 2),
    lambda x: F.avg_pool2d(x, 3, 1, 1),
    lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
    lambda x: F.unfold(x, 2),
], ids=["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive", "unfold"])
def test_unbatched_inputs_equal_a_batch_of_one(fn):
    x = np.random.default_rng(2).standard_normal((3, 4, 5))
    assert_close(fn(T(x)), fn(T(x[None])).numpy()[0])


def test_float32_stays_float32_and_dtypes_must_agree():
    x = Tensor(np.ones((1, 2, 4, 4), np.float32))
    w = Tensor(np.ones((3, 2, 3, 3), np.float32))
    for y in (F.conv2d(x, w), F.max_pool2d(x, 2), F.avg_pool2d(x, 2), F.interpolate(x, scale_factor=2, mode="bilinear"),
              F.conv_transpose2d(x, Tensor(np.ones((2, 3, 2, 2), np.float32))), F.pad(x, (1, 1), mode="reflect")):
        assert y.dtype == np.float32
    with pytest.raises(TypeError, match="input float32 and weight float64"):
        F.conv2d(x, w.double())


def test_conv_backward_is_deterministic_bit_for_bit():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((6, 2, 3, 3))
    grads = []
    for _ in range(2):
        xt, wt = T(x, True), T(w, True)
        F.conv2d(xt, wt, stride=2, padding=2, dilation=2, groups=2).sum().backward()
        grads.append((xt.grad.numpy(), wt.grad.numpy()))
    assert all(np.array_equal(a, b) for a, b in zip(grads[0], grads[1]))


def test_conv_second_derivative_through_a_gradient_penalty():
    """d/dw of |d loss/d x|²: backward through conv's backward (Fold and matmuls of Tensor ops)."""
    rng = np.random.default_rng(4)
    x, w = T(rng.standard_normal((1, 2, 5, 5)), True), T(rng.standard_normal((3, 2, 3, 3)), True)

    def penalty(x, w):
        (gx,) = mg.grad(F.conv2d(x, w, padding=1).tanh().sum(), [x], create_graph=True)
        return (gx * gx).sum()
    assert mg.gradcheck(penalty, [x, w], fast=True)


def test_interpolate_nearest_upsampling_by_two_repeats_pixels():
    x = np.arange(6.0).reshape(1, 1, 2, 3)
    y = F.interpolate(T(x), scale_factor=2).numpy()
    assert y.tolist() == np.repeat(np.repeat(x, 2, 2), 2, 3).tolist()


def test_interpolate_bilinear_to_the_same_size_is_the_identity_and_align_corners_keeps_corners():
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 4))
    assert_close(F.interpolate(T(x), size=(3, 4), mode="bilinear"), x)
    # align_corners: output row r samples input row r·2/6, column c samples c·3/8; rows 0, 3, 6 and
    # columns 0, 8 land exactly on input pixels
    y = F.interpolate(T(x), size=(7, 9), mode="bilinear", align_corners=True).numpy()
    assert_close(y[:, :, ::3][:, :, :, [0, 8]], x[:, :, :, [0, 3]])


def test_fold_of_unfold_counts_each_pixel_once_per_window():
    x = np.ones((1, 1, 4, 4))
    counts = F.fold(F.unfold(T(x), 3, padding=1), (4, 4), 3, padding=1).numpy()[0, 0]
    assert counts.tolist() == [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.conv2d(T(np.ones((1, 3, 5, 5))), T(np.ones((4, 2, 3, 3)))), ValueError, "input with 3 channels"),
    (lambda: F.conv2d(T(np.ones((1, 4, 5, 5))), T(np.ones((4, 2, 3, 3))), groups=3), ValueError, "groups=3"),
    (lambda: F.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((4, 2, 3)))), ValueError, "weight must be"),
    (lambda: F.conv2d(T(np.ones((5, 5))), T(np.ones((4, 2, 3, 3)))), ValueError, "expected a 4-D"),
    (lambda: F.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((4, 2, 3, 3))), T(np.ones(3))), ValueError,
     r"bias shape \(3,\)"),
    (lambda: F.conv2d(T(np.ones((1, 2, 2, 2))), T(np.ones((4, 2, 3, 3)))), ValueError, "output would be empty"),
    (lambda: F.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((4, 2, 3, 3))), stride=2, padding="same"), ValueError,
     "'same' needs stride 1"),
    (lambda: F.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((4, 2, 3, 3))), padding="full"), ValueError,
     "padding must be"),
    (lambda: F.conv2d(T(np.ones((1, 2, 5, 5))), T(np.ones((4, 2, 3, 3))), stride=0), ValueError, "each >= 1"),
    (lambda: F.conv_transpose2d(T(np.ones((1, 2, 3, 3))), T(np.ones((2, 1, 3, 3))), stride=2, output_padding=2),
     ValueError, "output_padding"),
    (lambda: F.max_pool2d(T(np.ones((1, 1, 4, 4))), 2, padding=2), ValueError, "at most half the kernel"),
    (lambda: F.max_pool2d(T(np.ones((1, 1, 0, 4))), 2), ValueError, "must be non-empty"),
    (lambda: F.avg_pool2d(Tensor(np.ones((1, 1, 4, 4), np.int64)), 2), TypeError, "floating-point"),
    (lambda: F.adaptive_avg_pool2d(T(np.ones((1, 1, 4, 4))), (0, 2)), ValueError, "output_size"),
    (lambda: F.interpolate(T(np.ones((1, 1, 4, 4))), size=3, scale_factor=2), ValueError, "exactly one"),
    (lambda: F.interpolate(T(np.ones((1, 1, 4, 4))), size=3, mode="bicubic"), ValueError, "mode must be"),
    (lambda: F.interpolate(T(np.ones((1, 1, 4))), size=3, mode="bilinear"), ValueError, "needs 2 spatial dims"),
    (lambda: F.interpolate(T(np.ones((1, 1, 4, 4))), size=3, align_corners=True), ValueError, "linear modes"),
    (lambda: F.fold(T(np.ones((1, 12, 8))), (4, 5), (2, 3), padding=1, stride=2), ValueError, "does not fit"),
    (lambda: F.pad(T(np.ones((2, 3))), (1, -1)), ValueError, "negative padding"),
    (lambda: F.pad(T(np.ones((2, 3))), (1, 1, 1)), ValueError, "even number"),
    (lambda: F.pad(T(np.ones((2, 0))), (1, 1), mode="reflect"), ValueError, "empty dimension"),
    (lambda: F.pad(T(np.ones((2, 3))), (1, 1), mode="wrap"), ValueError, "mode must be"),
])
def test_bad_arguments_raise_one_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_reflect_padding_wider_than_the_input_keeps_reflecting_like_numpy():
    x = np.arange(3.0).reshape(1, 3)
    assert_close(F.pad(T(x), (5, 4), mode="reflect"), np.pad(x, ((0, 0), (5, 4)), mode="reflect"))
    assert_close(F.pad(T(x), (4, 7), mode="circular"), np.pad(x, ((0, 0), (4, 7)), mode="wrap"))
