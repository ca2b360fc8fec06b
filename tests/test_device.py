"""The device side, checked wherever it can be: the default device and `--device cuda` (on the
strict stand-in here, on CuPy when a GPU runs the suite), the deterministic scatter-add and the
device dropout mask (their array code run with NumPy, and on CuPy compared with it bit for bit),
NumPy 2 type promotion on the device, erf, and the CuPy kernel loader's checks.

Tests taking the ``device`` fixture run on "cpu" in the default suite and on "cuda" under
``python -m pytest --device cuda``."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tol

import minigrad as mg
from minigrad import backend, dispatch
from minigrad.nn import functional as F
from minigrad.ops.shape import scatter_add_segmented

HERE = Path(__file__).parent


def _cupy():
    return backend._try_cupy() if backend.cuda_available() and not backend.strict_stands_in_for_cuda() else None


@pytest.fixture
def strict_cuda(monkeypatch):
    """"cuda" served by the strict module for one test (what MINIGRAD_STRICT=cuda does for a run)."""
    from minigrad import strict
    monkeypatch.setattr(backend, "_strict_cuda", True)
    monkeypatch.setenv("MINIGRAD_KERNELS", "off")
    prev = backend.set_default_device("cpu")
    yield strict
    backend.set_default_device(prev)


# ------------------------------------------------------------------ the default device

def test_host_data_lands_on_the_test_device(device):
    t = mg.Tensor(np.ones((2, 3), np.float32))
    assert t.device == device and backend.get_default_device() == device
    assert mg.zeros(2, 3).device == device and mg.tensor([1.0, 2.0]).device == device
    assert t.to("cpu").device == "cpu" and isinstance(t.numpy(), np.ndarray)


def test_default_device_moves_host_data_and_leaves_device_arrays(strict_cuda):
    assert mg.Tensor(np.ones(3)).device == "cpu"
    with backend.default_device("cuda"):
        t = mg.Tensor(np.arange(6.0).reshape(2, 3))
        assert t.device == "cuda" and isinstance(t.data, strict_cuda.StrictArray)
        assert mg.Tensor(t.data).device == "cuda" and mg.ones(2).device == "cuda"
        assert mg.Tensor(np.ones(3), device="cpu").device == "cpu"
        s = t * np.full((2, 3), 2.0)                 # host data goes where Tensor(...) would: the GPU
        assert s.device == "cuda" and np.array_equal(s.numpy(), 2 * np.arange(6.0).reshape(2, 3))
    assert backend.get_default_device() == "cpu"
    with pytest.raises(RuntimeError, match=r"host data \(default device cpu\) but the tensor is on cuda"):
        t * np.ones((2, 3))
    assert (t * np.float64(3.0)).device == "cuda"     # a NumPy scalar is a value on any device
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.set_default_device("tpu")


# ------------------------------------------------------------------ NumPy 2 promotion of scalars

# (tensor dtype, other operand, result dtype): a Python number (np.float64 is a subclass of float)
# takes a float tensor's dtype; with an integer tensor a float scalar gives float32 (PyTorch's rule,
# README "Conventions"); 0-d arrays are strong, as in NumPy 2 (NEP 50). Integer true division gives
# float32. The same on every device: on "cuda" the scalar is uploaded as a 0-d array.
PROMOTION = [
    (np.float32, 2.0, np.float32), (np.float32, 2, np.float32), (np.float64, 0.5, np.float64),
    (np.float32, np.float64(2.0), np.float32), (np.float32, np.float32(2.0), np.float32),
    (np.float64, np.float32(2.0), np.float64), (np.float32, np.asarray(2.0), np.float64),
    (np.float32, np.asarray(2.0, np.float32), np.float32), (np.int64, 2.5, np.float32),
    (np.int64, 3, np.int64), (np.int64, np.float32(1.5), np.float32), (np.int64, np.asarray(2.0), np.float64),
]


@pytest.mark.parametrize("dtype,other,want", PROMOTION, ids=[f"{np.dtype(d).name}-{type(o).__name__}-{o!r}"
                                                              for d, o, _ in PROMOTION])
def test_scalar_operands_promote_the_same_on_the_test_device(device, dtype, other, want):
    t = mg.Tensor(np.arange(1, 4).astype(dtype))
    host = np.arange(1, 4).astype(dtype)
    quotient = np.dtype(want) if np.dtype(want).kind == "f" else np.dtype(np.float32)
    for name, got, ref, dt in (("mul", t * other, host * other, want), ("radd", other + t, other + host, want),
                               ("div", t / other, host / other, quotient)):
        assert got.device == device
        assert got.dtype == np.dtype(dt), f"{name}: {got.dtype}, expected {np.dtype(dt)}"
        np.testing.assert_allclose(got.numpy(), ref, rtol=tol(np.float32)[0])


def test_reductions_and_comparisons_keep_dtypes_on_the_test_device(device):
    x = mg.Tensor(np.linspace(-1, 2, 12, dtype=np.float32).reshape(3, 4), requires_grad=True)
    for out in (x.sum(), x.mean(axis=1), x.max(), x.var(), x * x.sum(), x / x.mean(), x.exp().log(),
                mg.maximum(x, 0.0), mg.where(x.data > 0, x, 0.0), F.softmax(x, axis=-1), x.clip(-0.5, 0.5)):
        assert out.dtype == np.float32 and out.device == device
    (x * x.sum()).sum().backward()
    assert x.grad.dtype == np.float32
    assert (x > 0.5).dtype == np.bool_


RAW_EXPRESSIONS = {   # array expressions of the kinds the ops use, on numpy and on cupy
    "f32 + py float": lambda xp, a, i: a + 1.5,
    "f32 * np.float64": lambda xp, a, i: a * np.float64(2.0),
    "f32 * 0-d f64 array": lambda xp, a, i: a * xp.asarray(2.0),
    "f32 * 0-d f32 reduction": lambda xp, a, i: a * a.sum(),
    "py float / f32 reduction": lambda xp, a, i: 1.0 / a.sum(),
    "where(f32, py float)": lambda xp, a, i: xp.where(a > 0, a, 0.0),
    "maximum(f32, py int)": lambda xp, a, i: xp.maximum(a, 0),
    "clip(f32, py floats)": lambda xp, a, i: xp.clip(a, -0.5, 0.5),
    "f32 ** py int": lambda xp, a, i: a ** 2,
    "exp(f32 reduction)": lambda xp, a, i: xp.exp(a.max()),
    "i64 / py int": lambda xp, a, i: i / 2,
    "i64 + py int": lambda xp, a, i: i + 1,
    "i64 * f32": lambda xp, a, i: i * a,
    "sqrt(i64)": lambda xp, a, i: xp.sqrt(i),
    "bool sum": lambda xp, a, i: (a > 0).sum(),
    "f32 mean": lambda xp, a, i: a.mean(),
    "f32 * bool": lambda xp, a, i: a * (a > 0),
    "astype(f32) * py float": lambda xp, a, i: (a > 0).astype(np.float32) * (1.0 / 0.7),
}


@pytest.mark.skipif(_cupy() is None, reason="no GPU: CuPy's dtypes are compared with NumPy's on a GPU only")
@pytest.mark.parametrize("name", list(RAW_EXPRESSIONS))
def test_cupy_result_dtypes_equal_numpy_2s(name):
    cp = _cupy()
    a = np.linspace(-1, 1, 6, dtype=np.float32)
    i = np.arange(6, dtype=np.int64)
    fn = RAW_EXPRESSIONS[name]
    want, got = fn(np, a, i), fn(cp, cp.asarray(a), cp.asarray(i))
    assert np.dtype(got.dtype) == np.asarray(want).dtype, f"{name}: cupy {got.dtype}, numpy {np.asarray(want).dtype}"


# ------------------------------------------------------------------ deterministic scatter-add

def _scatter_cases(rng, dtype):
    yield (9, 4), rng.integers(-9, 9, size=(6, 7))                        # embedding rows, negative ids
    yield (5, 2, 3), rng.integers(0, 5, size=40)                           # rows of a 3-D tensor
    yield (3,), np.array([2, 2, 2, 0])                                     # a vector
    yield (4, 5, 6), (slice(None), np.array([0, 2, 2, 4]), np.array([1, 1, 1, 5]))   # advanced, mixed
    yield (6, 5), (np.array([[0, 0], [5, 0]]), slice(1, 4))
    yield (4, 3), np.array([True, False, True, True])                      # a boolean mask
    yield (4, 3), np.zeros(0, dtype=np.int64)                              # nothing to add


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segmented_scatter_add_gives_np_add_ats_bits(dtype):
    """The device variant's array code, run with NumPy: the same sums, added in the same order,
    as np.add.at (its CuPy kernel runs that loop per destination; the GPU test below compares)."""
    rng = np.random.default_rng(5)
    for shape, idx in _scatter_cases(rng, dtype):
        scale = 10.0 ** float(rng.integers(-3, 4))      # magnitudes differ: rounding differs by order
        values = (rng.standard_normal(np.zeros(shape)[idx].shape) * scale).astype(dtype)
        want = np.zeros(shape, dtype)
        np.add.at(want, idx, values)
        got = np.zeros(shape, dtype)
        scatter_add_segmented(got, idx, values)
        assert got.dtype == want.dtype and np.array_equal(got, want), (shape, idx)


def test_getitem_backward_on_the_strict_device_uses_the_segmented_variant(strict_cuda):
    rng = np.random.default_rng(2)
    w = rng.standard_normal((11, 6))
    ids = rng.integers(0, 11, size=(4, 9))
    g = rng.standard_normal((4, 9, 6))
    t = mg.Tensor(w, requires_grad=True, device="cuda")
    with dispatch.trace() as seen:
        (F.embedding(ids, t) * mg.Tensor(g, device="cuda")).sum().backward()
    assert "IndexAddSegmented" in seen and isinstance(t.grad.data, strict_cuda.StrictArray)
    want = np.zeros_like(w)
    np.add.at(want, ids, g)
    assert np.array_equal(t.grad.numpy(), want)


def _embedding_grad(w, ids, g):
    t = mg.Tensor(w, requires_grad=True)
    (F.embedding(ids, t) * mg.Tensor(g)).sum().backward()
    return t.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_gradient_is_bit_reproducible_on_the_test_device(device, dtype):
    """Repeated ids (a batch of text: few distinct tokens, many repeats), summed twice: identical
    bits. On cuda the segmented kernel gives np.add.at's bits; atomics would not."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((65, 128)).astype(dtype)
    ids = rng.integers(0, 65, size=(12, 64)) ** 2 % 65      # skewed: some ids repeat often
    g = rng.standard_normal((12, 64, 128)).astype(dtype)
    with dispatch.trace() as seen:
        a = _embedding_grad(w, ids, g)
    b = _embedding_grad(w, ids, g)
    assert np.array_equal(a, b)
    want = np.zeros_like(w)
    np.add.at(want, ids, g)
    if device == "cuda":
        assert "IndexAddSegmented" in seen
        assert np.array_equal(a, want)
    else:
        rtol, atol = tol(dtype, ulps=64 * 12 * 64)
        np.testing.assert_allclose(a, want, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ dropout on a device

def _splitmix64(i, seed):
    m = (1 << 64) - 1
    z = (seed + (i + 1) * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_dropout_mask_is_splitmix64_thresholded():
    assert _splitmix64(0, 0) == 0xE220A8397B1DCDAF      # SplitMix64's published first output for seed 0
    seed, p = 987654321, 0.3
    m = F.dropout_mask(np, seed, p, (50, 40), np.float32)
    assert m.dtype == np.float32 and m.shape == (50, 40)
    flat = m.reshape(-1)
    thresh = math.ceil(p * 2 ** 53)
    for i in list(range(20)) + [1999]:
        keep = (_splitmix64(i, seed) >> 11) >= thresh
        assert flat[i] == (np.float32(1 / (1 - p)) if keep else 0.0), i
    big = F.dropout_mask(np, 7, p, (400, 500), np.float64)
    n = big.size
    kept = int((big != 0).sum())
    assert abs(kept - (1 - p) * n) <= 5 * math.sqrt(n * p * (1 - p))       # binomial, 5 sigma
    assert not np.array_equal(big, F.dropout_mask(np, 8, p, (400, 500), np.float64))
    assert np.array_equal(big, F.dropout_mask(np, 7, p, (400, 500), np.float64))


def test_cpu_dropout_keeps_its_numbers():
    x = np.random.default_rng(0).standard_normal((6, 7)).astype(np.float32)
    y = F.dropout(mg.Tensor(x, device="cpu"), 0.4, True, np.random.default_rng(11))
    keep = np.random.default_rng(11).random(x.shape) >= 0.4
    assert np.array_equal(y.numpy(), x * (keep / 0.6).astype(np.float32))


def test_dropout_on_the_test_device_is_seeded_and_its_gradient_uses_the_mask(device):
    x = mg.Tensor(np.random.default_rng(1).standard_normal((64, 33)), requires_grad=True)
    y1 = F.dropout(x, 0.25, True, np.random.default_rng(4))
    y2 = F.dropout(x, 0.25, True, np.random.default_rng(4))
    assert y1.device == device and np.array_equal(y1.numpy(), y2.numpy())
    y1.sum().backward()
    kept = y1.numpy() != 0
    np.testing.assert_array_equal(x.grad.numpy(), np.where(kept, 1 / 0.75, 0.0))
    if device != "cpu":        # drawn on the device: the counter-based mask of the generator's next seed
        seed = int(np.random.default_rng(4).integers(0, 1 << 63))
        np.testing.assert_array_equal(kept, F.dropout_mask(np, seed, 0.25, (64, 33), np.float64) != 0)


@pytest.mark.skipif(_cupy() is None, reason="no GPU: the CuPy mask kernel is compared with the NumPy code on a GPU")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cupy_dropout_kernel_equals_the_numpy_mask(dtype):
    cp = _cupy()
    for seed, p, shape in ((0, 0.1, (1000,)), (2 ** 62 + 12345, 0.5, (37, 129)), (99, 0.9, (8, 4, 33))):
        got = F.dropout_mask(cp, seed, p, shape, dtype)
        assert got.dtype == np.dtype(dtype) and np.array_equal(got.get(), F.dropout_mask(np, seed, p, shape, dtype))


# ------------------------------------------------------------------ erf

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_on_the_test_device_matches_math_erf(device, dtype):
    from minigrad.ops.special import erf, erf_array
    x = np.concatenate([np.linspace(-6, 6, 241), [0.0, -0.0, 1e-8, -3e-5]]).astype(dtype)
    got = erf(mg.Tensor(x))
    assert got.device == device and got.dtype == np.dtype(dtype)
    want = np.array([math.erf(float(v)) for v in x])
    rtol, atol = tol(dtype, ulps=16 if dtype == np.float64 else 64)
    np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=atol)
    ints = mg.Tensor(np.array([0, 1, -2]))
    assert erf_array(ints.data).dtype == np.float64


# ------------------------------------------------------------------ the CuPy kernel loader

class _FakeKernel:
    """What CupyModule needs of a cupy RawKernel: its attributes, the attribute setter, the call."""

    def __init__(self, static=1024, max_threads=1024):
        self.shared_size_bytes, self.max_threads_per_block = static, max_threads
        self.max_dynamic_shared_size_bytes = 48 * 1024 - static
        self.sets, self.calls = [], []

    def __setattr__(self, name, value):
        if name == "max_dynamic_shared_size_bytes" and hasattr(self, "sets"):
            self.sets.append(value)
        object.__setattr__(self, name, value)

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem))


def _module(kernel, optin=227 * 1024):
    from minigrad.kernels.runtime import CupyModule
    m = object.__new__(CupyModule)
    m.cu, m._fns, m._dynamic = "fake.cu", {}, {}
    m.mod = type("M", (), {"get_function": lambda self, name: kernel})()
    m._optin_limit = lambda: optin
    return m


def test_cupy_loader_passes_null_pointers_and_opts_in_to_large_shared_memory():
    from minigrad.kernels.runtime import KernelLaunchError
    k = _FakeKernel(static=1024)
    m = _module(k)
    m.launch("k<float>", 3, (32, 4), (None, np.int32(5)), shared_mem=40 * 1024)
    (grid, block, args, smem), = k.calls
    assert grid == (3, 1, 1) and block == (32, 4, 1) and smem == 40 * 1024 and k.sets == []
    assert type(args[0]) is np.uint64 and args[0] == 0 and args[1] == 5
    # static 1 KiB + dynamic 47.5 KiB: over 48 KiB in total, so the launch must opt in
    with pytest.raises(KernelLaunchError, match=r"shared memory 49664 bytes \(static 1024 \+ dynamic 48640\) "
                                                 r"exceeds the limit of 49152"):
        m.launch("k<float>", 1, 32, (), shared_mem=48640)
    m.launch("k<float>", 1, 32, (), shared_mem=48640, max_shared=100 * 1024)
    m.launch("k<float>", 1, 32, (), shared_mem=48640, max_shared=100 * 1024)
    assert k.sets == [48640]                                  # set once per size
    with pytest.raises(KernelLaunchError, match="opt-in maximum of 65536"):
        _module(_FakeKernel(), optin=64 * 1024).launch("k<float>", 1, 32, (), shared_mem=80 * 1024,
                                                        max_shared=96 * 1024)
    with pytest.raises(KernelLaunchError, match="at most 256 per block"):
        _module(_FakeKernel(max_threads=256)).launch("k<float>", 1, (32, 16), ())


# ------------------------------------------------------------------ `pytest --device cuda` itself

def _pytest(args, env_extra, quiet="-q"):
    env = {k: v for k, v in os.environ.items() if k not in ("MINIGRAD_TEST_DEVICE", "MINIGRAD_STRICT")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", quiet, "-rs",
                           *args], cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_device_cuda_without_a_gpu_skips_with_one_reason_and_exits_0():
    if backend.cuda_available():
        pytest.skip("a GPU (or the strict stand-in) is here: --device cuda runs the tests")
    for args, extra in ((["--device", "cuda"], {}), ([], {"MINIGRAD_TEST_DEVICE": "cuda"})):
        r = _pytest(args + ["tests/test_autograd.py", "tests/test_device.py"], extra)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        reasons = {line.split(": ", 1)[1] for line in r.stdout.splitlines() if line.startswith("SKIPPED")}
        assert len(reasons) == 1 and next(iter(reasons)).startswith("no GPU: --device cuda needs CuPy"), reasons
        assert " passed" not in r.stdout and " skipped" in r.stdout


def test_device_cuda_runs_the_suites_on_the_strict_stand_in(device):
    if device != "cpu":
        pytest.skip("this run is already on a device")
    r = _pytest(["--device", "cuda", "tests/test_autograd.py", "tests/test_device.py",
                 "-k", "not device_cuda_runs_the_suites"], {"MINIGRAD_STRICT": "cuda"}, quiet="-rf")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "served by the strict stand-in" in r.stdout and " passed" in r.stdout and " failed" not in r.stdout
