"""minigrad.manipulation (tril, triu, flip, roll, repeat, tile, meshgrid, diagonal, trace, gather,
scatter, scatter_add, take_along_axis, index_select, masked_fill), the Tensor methods that call it,
and boolean-mask indexing on the right-hand side: semantics beyond the registry entries, and errors."""
import numpy as np
import pytest
from conftest import assert_close

import minigrad as mg
from minigrad import Tensor
from minigrad import manipulation as M
from minigrad.ops.indexing import last_writers


def T(a, grad=False):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def test_tensor_methods_call_the_functions():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 5))
    x = T(a)
    idx = rng.integers(0, 4, (3, 2, 5))
    cases = [(x.tril(1), np.tril(a, 1)), (x.triu(-1), np.triu(a, -1)), (x.flip(1), np.flip(a, 1)),
             (x.roll(2, 2), np.roll(a, 2, 2)), (x.repeat(2, 0), np.repeat(a, 2, 0)), (x.tile((2, 1)), np.tile(a, (2, 1))),
             (x.diagonal(1, 1, 2), np.diagonal(a, 1, 1, 2)), (x.trace(0, 0, 2), np.trace(a, 0, 0, 2)),
             (x.gather(1, idx), np.take_along_axis(a, idx, 1)), (x.take_along_axis(idx, 1), np.take_along_axis(a, idx, 1)),
             (x.index_select(2, [4, 4, 0]), a[:, :, [4, 4, 0]]), (x.masked_fill(a > 0, -1.0), np.where(a > 0, -1.0, a)),
             (x.scatter_add(0, np.zeros((1, 4, 5), np.int64), T(np.ones((1, 4, 5)))), a + np.eye(3)[0][:, None, None])]
    for got, want in cases:
        assert_close(got, want)
    assert_close(x.scatter(1, idx[:, :1], 7.0), _np_scatter(a, 1, idx[:, :1], np.full((3, 1, 5), 7.0)))


def _np_scatter(a, dim, idx, src):
    out = a.copy()
    np.put_along_axis(out, idx, src, dim)
    return out


def test_repeat_follows_numpy_and_tile_is_pytorch_repeat():
    a = np.arange(6.0).reshape(2, 3)
    assert M.repeat(T(a), 2).numpy().tolist() == np.repeat(a, 2).tolist()          # axis None: flattened
    assert M.repeat(T(a), [1, 2], axis=0).numpy().tolist() == [[0, 1, 2], [3, 4, 5], [3, 4, 5]]
    assert M.tile(T(a), 2).shape == (2, 6) and M.tile(T(a), (3, 1, 1)).shape == (3, 2, 3)
    assert M.tile(T(a), (0, 1)).shape == (0, 3)


def test_meshgrid_xy_and_ij_match_numpy_with_three_inputs():
    xs = [np.arange(2.0), np.arange(3.0) + 10, np.arange(4.0) + 100]
    for indexing in ("xy", "ij"):
        got = M.meshgrid(*(T(a) for a in xs), indexing=indexing)
        for g, w in zip(got, np.meshgrid(*xs, indexing=indexing)):
            assert_close(g, w)
    with pytest.raises(ValueError, match="indexing must be"):
        M.meshgrid(T(xs[0]), indexing="yx")


def test_scatter_with_repeated_targets_writes_the_last_source_and_only_it_gets_gradient():
    x = T(np.zeros((3, 2)), grad=True)
    src = T(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), grad=True)
    idx = np.array([[0, 1], [0, 1], [2, 1]])                  # rows 0 and 1 of column 0 both target x[0, 0]
    y = M.scatter(x, 0, idx, src)
    assert y.numpy().tolist() == [[3.0, 0.0], [0.0, 6.0], [5.0, 0.0]]
    y.backward(T(np.arange(1.0, 7.0).reshape(3, 2)))
    assert x.grad.numpy().tolist() == [[0.0, 2.0], [3.0, 0.0], [0.0, 6.0]]          # overwritten positions: 0
    assert src.grad.numpy().tolist() == [[0.0, 0.0], [1.0, 0.0], [5.0, 4.0]]       # the losers get 0


@pytest.mark.parametrize("seed", range(5))
def test_last_writers_marks_the_last_source_of_each_target(seed):
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, 6, 40)
    keep = last_writers(np, flat, 6)
    want = np.zeros(40, bool)
    for t in np.unique(flat):
        want[np.flatnonzero(flat == t)[-1]] = True
    assert keep.tolist() == want.tolist()


def test_scatter_add_accumulates_repeats_in_order_and_gathers_back():
    x = T(np.zeros(4), grad=True)
    src = T(np.array([1.0, 2.0, 3.0, 4.0]), grad=True)
    y = M.scatter_add(x, 0, np.array([3, 0, 3, 3]), src)
    assert y.numpy().tolist() == [2.0, 0.0, 0.0, 8.0]
    y.backward(T(np.array([10.0, 20.0, 30.0, 40.0])))
    assert src.grad.numpy().tolist() == [40.0, 10.0, 40.0, 40.0] and x.grad.numpy().tolist() == [10, 20, 30, 40]


def test_negative_indices_count_from_the_end():
    a = np.arange(12.0).reshape(3, 4)
    assert_close(M.index_select(T(a), 1, [-1, 0]), a[:, [3, 0]])
    assert_close(M.gather(T(a), 0, np.array([[-1, 0, -3, 2]])), a[[2, 0, 0, 2], [0, 1, 2, 3]][None])


def test_masked_fill_with_a_tensor_value_sends_the_masked_gradient_to_it():
    x, v = T(np.arange(6.0).reshape(2, 3), True), T(2.5, True)
    mask = np.array([True, False, True])
    y = M.masked_fill(x, mask, v)
    assert y.numpy().tolist() == [[2.5, 1.0, 2.5], [2.5, 4.0, 2.5]]
    y.sum().backward()
    assert v.grad.item() == 4.0 and x.grad.numpy().tolist() == [[0, 1, 0], [0, 1, 0]]


def test_boolean_mask_indexing_on_the_right_hand_side():
    a = np.arange(24.0).reshape(2, 3, 4)
    x = T(a, True)
    m = a.sum(axis=2) > 20                                       # (2, 3) over the leading dims
    y = x[Tensor(m)]                                             # a bool Tensor works as the mask
    assert y.shape == (int(m.sum()), 4)
    assert_close(y, a[m])
    y.sum().backward()
    assert_close(x.grad, np.broadcast_to(m[..., None], a.shape).astype(float))
    col = np.array([True, False, True, False])
    assert_close(x[:, 1, col], a[:, 1, col])
    none = x[np.zeros((2, 3), bool)]                             # nothing selected: empty, zero gradient
    assert none.shape == (0, 4)
    x.grad = None
    none.sum().backward()
    assert not x.grad.numpy().any()
    with pytest.raises(IndexError):
        x[np.ones((3, 3), bool)]


def test_diagonal_and_trace_of_rectangles_and_offsets_past_the_edge():
    a = np.arange(12.0).reshape(3, 4)
    for off in (-3, -1, 0, 2, 4, 9):
        assert_close(M.diagonal(T(a), off), np.diagonal(a, off))
        assert_close(M.trace(T(a), off), np.trace(a, off))


@pytest.mark.parametrize("call, error, match", [
    (lambda x: M.gather(x, 0, np.array([[3, 0]])), IndexError, "index 3 is out of range for dimension 0 of size 3"),
    (lambda x: M.gather(x, 0, np.array([0, 1])), ValueError, "index has 1 dimensions"),
    (lambda x: M.gather(x, 0, np.zeros((1, 5), np.int64)), ValueError, "exceeds the tensor's shape"),
    (lambda x: M.gather(x, 0, np.zeros((1, 2))), TypeError, "must hold integers"),
    (lambda x: M.scatter(x, 0, np.zeros((2, 2), np.int64), T(np.ones((1, 2)))), ValueError, "src of shape"),
    (lambda x: M.take_along_axis(x, np.zeros((2, 2), np.int64), 1), ValueError, "do not broadcast"),
    (lambda x: M.index_select(x, 0, np.zeros((1, 1), np.int64)), ValueError, "must be 1-D"),
    (lambda x: M.masked_fill(x, np.ones(4), 0.0), TypeError, "must be boolean"),
    (lambda x: M.masked_fill(x, np.ones((2, 3, 4), bool), 0.0), ValueError, "does not broadcast to"),
    (lambda x: M.roll(x, (1, 2), 0), ValueError, "one axis needs one int shift"),
    (lambda x: M.roll(x, (1, 2), (0, 1, 0)), ValueError, "2 shifts for 3 axes"),
    (lambda x: M.repeat(x, [1, 2], 0), ValueError, "3 non-negative ints"),
    (lambda x: M.tile(x, (-1, 1)), ValueError, "reps must be >= 0"),
    (lambda x: M.tril(x[0]), ValueError, "at least 2 dimensions"),
    (lambda x: M.diagonal(x, 0, 1, -1), ValueError, "axis1 and axis2 are both 1"),
])
def test_bad_arguments_raise_one_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(T(np.ones((3, 4))))


def test_gather_gradient_accumulates_repeated_indices():
    x = T(np.arange(4.0), True)
    M.gather(x, 0, np.array([1, 1, 3, 1])).sum().backward()
    assert x.grad.numpy().tolist() == [0.0, 3.0, 0.0, 1.0]


def test_manipulation_on_the_strict_backend(strict_backend):
    """Index arrays and masks are built with the inputs' array module (as on a GPU)."""
    a = np.random.default_rng(1).standard_normal((3, 4))
    x = T(a, True)
    y = (M.tril(x) + M.flip(x, 0) + M.roll(x, 1, 1) + M.masked_fill(x, a > 0, 0.0)
         + M.scatter(x, 0, np.array([[2, 0, 1, 0]]), 1.0) + M.gather(x, 1, np.array([[0, 3, 3, 1]] * 3)))
    y = y.sum() + M.repeat(x, 2, 0).sum() + M.trace(x) + mg.stack(M.meshgrid(x[0], x[1])).sum()
    y.backward()
    assert type(x.grad.data).__name__ == "StrictArray"
