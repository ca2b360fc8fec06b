"""Bad input gets a clear error naming what is wrong, never a traceback from deep inside NumPy."""
import re

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor, backend, strict
from minigrad.nn import functional as F


def t(*shape, dtype=np.float64, grad=False):
    return Tensor(np.ones(shape, dtype), requires_grad=grad)


def shapes_named(*shapes):
    """A regex that finds every shape, in order, in the message."""
    return ".*".join(re.escape(str(tuple(s))) for s in shapes)


# ------------------------------------------------------------------ shape mismatches

@pytest.mark.parametrize("op,name", [(lambda a, b: a + b, "Add"), (lambda a, b: a - b, "Sub"),
                                     (lambda a, b: a * b, "Mul"), (lambda a, b: a / b, "Div"),
                                     (lambda a, b: a ** b, "Pow"), (mg.maximum, "Maximum"),
                                     (mg.minimum, "Minimum")])
def test_broadcast_failure_names_the_op_and_both_shapes(op, name):
    with pytest.raises(ValueError, match=name + ".*" + shapes_named((3, 4), (5,))):
        op(t(3, 4, grad=True), t(5))


@pytest.mark.parametrize("make,pattern", [
    (lambda: t(2, 3) @ t(4, 2), r"matmul.*\(2, 3\).*\(4, 2\)"),
    (lambda: t(2, 2, 3) @ t(3, 3, 2), r"matmul.*\(2, 2, 3\).*\(3, 3, 2\)"),
    (lambda: t(2, 3).reshape(4, 2), r"reshape.*\(2, 3\).*\(4, 2\)"),
    (lambda: t(2, 3).broadcast_to((4, 2)), r"broadcast_to.*\(2, 3\).*\(4, 2\)"),
    (lambda: mg.concatenate([t(2, 3), t(3, 2)]), r"concatenate.*\(2, 3\).*\(3, 2\)"),
    (lambda: mg.stack([t(2, 3), t(3, 2)]), r"stack.*\(2, 3\).*\(3, 2\)"),
    (lambda: F.mse_loss(t(2, 3), t(3, 2)), r"mse_loss.*\(2, 3\).*\(3, 2\)"),
    (lambda: F.linear(t(2, 3), t(4, 5)), r"linear.*\(4, 5\)"),
    (lambda: F.layer_norm(t(2, 3), 4), r"layer_norm.*\(2, 3\).*\(4,\)"),
    (lambda: F.layer_norm(t(2, 3), 3, t(4)), r"layer_norm.*weight.*\(4,\).*\(3,\)"),
    (lambda: F.cross_entropy(t(4, 3), np.zeros(5, np.int64)), r"cross_entropy.*\(4, 3\).*\(5,\)"),
    (lambda: F.scaled_dot_product_attention(t(1, 4, 8), t(1, 5, 7), t(1, 5, 8)),
     r"scaled_dot_product_attention.*\(1, 4, 8\).*\(1, 5, 7\)"),
    (lambda: t(2, 3).squeeze(0), r"squeeze.*axis 0.*\(2, 3\)"),
    (lambda: t(2, 3).sum(axis=2), r"axis 2.*2 dimensions"),
    (lambda: t(2, 3).transpose(0, 0), r"transpose"),
    (lambda: F.mse_loss(t(2), t(2), reduction="avg"), r"mse_loss: reduction"),
])
def test_shape_errors_are_value_errors_naming_op_and_shapes(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize("make,op,axis,ndim", [
    (lambda: t(2, 3).transpose(0, 5), "transpose", 5, 2),
    (lambda: t(2, 3).swapaxes(-3, 0), "swapaxes", -3, 2),
    (lambda: t(2, 3).expand_dims(4), "expand_dims", 4, 3),
    (lambda: mg.concatenate([t(2, 3), t(2, 3)], axis=2), "concatenate", 2, 2),
    (lambda: mg.stack([t(2, 3), t(2, 3)], axis=-4), "stack", -4, 3),
    (lambda: mg.split(t(2, 4), 2, axis=2), "split", 2, 2),
    (lambda: F.softmax(t(2, 3), axis=2), "softmax", 2, 2),
    (lambda: F.log_softmax(t(2, 3), axis=-3), "log_softmax", -3, 2),
])
def test_an_axis_out_of_range_is_refused_not_wrapped(make, op, axis, ndim):
    with pytest.raises(ValueError, match=rf"{op}: axis {axis} is out of range for a tensor with {ndim} dimensions"):
        make()


# ------------------------------------------------------------------ the named bad inputs

def test_requires_grad_on_an_integer_tensor_raises():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3)).requires_grad_()


def test_backward_on_a_non_scalar_without_grad_raises():
    y = t(2, 3, grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()


def test_backward_on_a_tensor_that_needs_no_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        t(2).sum().backward()


@pytest.mark.parametrize("index,pattern", [
    (5, r"index 5.*size 3"),
    (-4, r"index -4.*size 3"),
    (np.array([0, 7]), r"index 7.*size 3"),
    ((slice(None), np.array([0, 9])), r"index 9.*dimension 1.*size 4"),
    ((Ellipsis, np.array([-5])), r"index -5.*size 4"),
])
def test_index_out_of_range_raises_index_error_naming_it(index, pattern):
    x = Tensor(np.zeros((3, 4)), requires_grad=True)
    with pytest.raises(IndexError, match=pattern):
        x[index]


def test_matmul_dtype_mismatch_raises_type_error():
    with pytest.raises(TypeError, match="float32.*float64"):
        t(2, 3, dtype=np.float32) @ t(3, 2)


def test_embedding_and_cross_entropy_index_errors():
    w = Tensor(np.zeros((5, 2)), requires_grad=True)
    with pytest.raises(IndexError, match="index 5"):
        F.embedding(np.array([1, 5]), w)
    with pytest.raises(TypeError, match="integer"):
        F.embedding(np.array([1.0]), w)
    with pytest.raises(IndexError, match="target 3.*3 classes"):
        F.cross_entropy(t(2, 3), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(t(2, 3), np.array([0.0, 1.0]))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(t(2), approximate="fast")
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout(t(2), 1.5)
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(t(2, 3), np.array([0, 1]), reduction="avg")
    with pytest.raises(TypeError, match="boolean"):
        mg.where(np.array([1, 0]), t(2), t(2))
    with pytest.raises(ValueError, match=r"item\(\).*\(2,\)"):
        t(2).item()
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        t(2).to("tpu")


# ------------------------------------------------------------------ devices

def test_to_cuda_without_a_gpu_says_what_is_missing():
    if backend.cuda_available():
        pytest.skip("a CUDA GPU is present: to('cuda') works here")
    with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
        t(2).to("cuda")
    with pytest.raises(RuntimeError, match="CuPy and a CUDA GPU"):
        Tensor(np.ones(2), device="cuda")


def test_mixing_device_arrays_with_host_arrays_is_refused():
    # the strict backend stands in for a GPU array module: its arrays refuse numpy ones
    dev = Tensor._make(strict.asarray(np.ones(3)))
    host = Tensor._make(np.ones(3))
    with pytest.raises(strict.StrictConversionError, match="numpy.ndarray was mixed with device arrays"):
        dev + host
    with pytest.raises(strict.StrictConversionError):
        host * dev


def test_mixing_devices_in_one_op_names_both_devices(monkeypatch):
    # make the strict arrays report device "cuda", as cupy arrays do, to exercise Function.apply's check
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of",
                        lambda a: "cuda" if type(a).__module__ == "minigrad.strict" else real(a))
    gpu = Tensor._make(strict.asarray(np.ones((2, 2))), True)
    cpu = Tensor._make(np.ones((2, 2)))     # a plain numpy array even under MINIGRAD_STRICT=1
    assert gpu.device == "cuda" and cpu.device == "cpu"
    for op in (lambda a, b: a + b, lambda a, b: a @ b, lambda a, b: mg.concatenate([a, b])):
        with pytest.raises(RuntimeError, match="different devices.*(cuda and cpu|cpu and cuda)"):
            op(gpu, cpu)


def test_truth_value_of_a_multi_element_tensor_is_an_error():
    t = mg.Tensor([1.0, -1.0])
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t > 0)
    assert bool(mg.Tensor([2.0]) > 1.0) is True


def test_cross_entropy_mean_over_only_ignored_targets_is_nan_as_in_pytorch():
    logits = mg.Tensor(np.zeros((2, 3)), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([-100, -100]))
    assert np.isnan(loss.item())
