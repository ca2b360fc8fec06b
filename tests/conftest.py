"""Shared test helpers for the engine suite.

The engine tests compare through ``Tensor.numpy()`` (an explicit host copy), never ``.data``,
so the same files run unchanged on the strict backend:

    MINIGRAD_STRICT=1 python -m pytest tests/test_ops.py tests/test_nn.py ...

With MINIGRAD_STRICT=1 every "cpu" tensor holds a ``minigrad.strict.StrictArray`` (a stand-in
for a CuPy array that refuses implicit conversion to NumPy), so an op that allocates with numpy
instead of its inputs' array module fails there as it would on a GPU.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:        # `pytest` (not only `python -m pytest`) from the repo root finds minigrad/
    sys.path.insert(0, ROOT)

from minigrad import strict

try:
    from hypothesis import HealthCheck, settings
    # Randomised, not frozen: every run draws new examples from a fresh seed, which a failed run prints
    # at its end ("hypothesis seed N"); `pytest --hypothesis-seed=N` replays that run. A failure prints
    # its draws (and a ready-to-paste regression entry, see tests/test_shapes_hypothesis.py) and, with
    # print_blob, an @reproduce_failure(...) line. Failing examples also go to the local database
    # (.hypothesis/, ignored by git) and are replayed first on the next local run; a fresh CI clone
    # has no database, so a failure found there is kept by adding it to the test file as an explicit
    # case. No per-example deadline on a shared 2-core machine.
    settings.register_profile("minigrad", deadline=None, derandomize=False, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    # the old frozen behaviour, for bisecting: pytest --hypothesis-profile=minigrad-frozen
    settings.register_profile("minigrad-frozen", settings.get_profile("minigrad"), derandomize=True)
    settings.load_profile("minigrad")
except ImportError:   # hypothesis is a dev dependency; the files that need it importorskip it
    pass


def _pick_hypothesis_seed(config):
    """Pick this run's hypothesis seed (unless --hypothesis-seed gave one) before hypothesis' own
    plugin reads the option, so the seed is known and printed (header, and summary of a failed run).
    Called first by pytest_configure below (one hook of each name per conftest: a second definition
    would replace the first)."""
    try:
        seed = config.getoption("hypothesis_seed")
    except ValueError:          # hypothesis is not installed: no option
        return
    if seed is None and config.getoption("hypothesis_profile", None) != "minigrad-frozen":
        config.option.hypothesis_seed = str(int.from_bytes(os.urandom(4), "little"))


# Hypothesis tests that fail for some draws because of the test's own check, not the code: pinned to
# the examples the old frozen profile drew (which pass) until the check is fixed as described.
PINNED: dict = {}   # test node id -> why it keeps hypothesis' frozen draws (none today)


def _pin_hypothesis_draws(items):
    try:
        from hypothesis import settings
    except ImportError:
        return
    for item in items:
        fn = getattr(item, "obj", None)
        if item.nodeid.split("[")[0] in PINNED and hasattr(fn, "_hypothesis_internal_use_settings"):
            # what @settings(derandomize=True) would set, applied from here
            fn._hypothesis_internal_use_settings = settings(fn._hypothesis_internal_use_settings, derandomize=True)


def _seed_line(config):
    try:
        seed = config.getoption("hypothesis_seed")
    except ValueError:
        return None
    return None if seed is None else f"hypothesis seed {seed} (replay this run's draws: pytest --hypothesis-seed={seed})"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The seed again at the end of a failed run (the header is hidden under -q, which CI uses)."""
    line = _seed_line(config)
    if line and (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        terminalreporter.write_line(line)

EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): float(np.finfo(np.float64).eps)}


def tol(dtype, ulps=64):
    """(rtol, atol) for comparing a result computed in ``dtype`` against an exact-ish reference:
    ``ulps`` units of roundoff of that float type. 64 ulps covers the few-dozen rounding steps of
    the ops here (short sums, exp/log, erf); it is not tuned per op."""
    e = EPS[np.dtype(dtype)]
    return ulps * e, ulps * e


def assert_close(actual, expected, dtype=np.float64, ulps=64, err_msg=""):
    """Compare a Tensor (via .numpy()) or array with a NumPy reference at a dtype-derived tolerance."""
    a = actual.numpy() if hasattr(actual, "numpy") and not isinstance(actual, np.ndarray) else np.asarray(actual)
    rtol, atol = tol(dtype, ulps)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"{err_msg}: shape {a.shape} != reference shape {e.shape}"
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=err_msg)


def run_torch(fn, arrays, go):
    """The PyTorch side of a parity test: ``fn`` on float64 leaf tensors made from ``arrays``, then
    backward with upstream gradient ``go``. Returns (output, [gradient of each input]) as arrays; an
    input the output does not depend on gets zeros. torch is imported here, by the parity files only
    (they importorskip it first)."""
    import torch
    ts = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.from_numpy(np.asarray(go, np.float64)))
    return out.detach().numpy(), [t.grad.numpy() if t.grad is not None else np.zeros(t.shape) for t in ts]


def strict_is_on() -> bool:
    return strict.enabled()


@pytest.fixture
def strict_backend():
    """Turn the strict backend on for one test and restore the previous setting after it."""
    prev = strict.enabled()
    strict.enable(True)
    try:
        yield strict
    finally:
        strict.enable(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def fast_paths():
    """The fast variants chosen (MINIGRAD_IMPL=auto) for a test about them, even when the suite runs
    with MINIGRAD_IMPL=reference."""
    from minigrad import dispatch
    with dispatch.impl("auto"):
        yield


@pytest.fixture
def native_on(monkeypatch, fast_paths):
    """The native CPU library on (and the CUDA kernels off): skips, saying why, without a compiler."""
    import warnings

    from minigrad import dispatch
    monkeypatch.setenv("MINIGRAD_CPU_NATIVE", "1")
    monkeypatch.setenv("MINIGRAD_KERNELS", "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dispatch.cpu_native() is None:
            pytest.skip("the native CPU library could not be built here (no usable C++ compiler)")


# ================================================================ the device the suites run on
# `python -m pytest --device cuda` (or MINIGRAD_TEST_DEVICE=cuda) runs the device suites below with
# every tensor made from host data on "cuda" (minigrad.backend.set_default_device): the tests keep
# building tensors from NumPy arrays and comparing through .numpy(), unchanged. Without a GPU every
# test is skipped with one reason and the run exits 0. `--device cpu` (the default) changes nothing.
#
# Under --device cuda a test is skipped, saying why, when it is about the CPU: a file outside
# DEVICE_SUITES, a test using the native_on or strict_backend fixture, the emulator half of the
# kernel files' own `device` parametrisation (run by the cpu suite), or an entry of CPU_ONLY.
#
# The mechanism runs on a machine without a GPU through the strict stand-in: with
# MINIGRAD_STRICT=cuda the strict test module serves "cuda" instead of CuPy, so
#     MINIGRAD_STRICT=cuda python -m pytest --device cuda
# runs the whole device selection with every "cuda" tensor a StrictArray (the CUDA kernels are
# switched off there: their launchers take numpy or cupy arrays only).
DEVICE_SUITES = {
    "test_ops.py", "test_shapes_hypothesis.py", "test_autograd.py", "test_gradcheck.py", "test_nn.py",
    "test_optim.py", "test_gpt.py", "test_seq2seq.py", "test_kernels_layernorm.py", "test_kernels_attention.py",
    "test_qkv_attention.py", "test_gelu_mlp.py", "test_dispatch.py", "test_errors.py", "test_device.py",
    "test_distributed_cuda.py",
}
# node id (file::test for every parametrisation, or file::test[id] for one) -> why it cannot run
# with its tensors on a GPU
_DEVICE_MASK = "its reference draws dropout's CPU mask; on a device the mask comes from dropout_mask"
CPU_ONLY = {
    "tests/test_ops.py::test_forward_float64_matches_numpy[dropout_fixed_mask]": _DEVICE_MASK,
    "tests/test_ops.py::test_forward_float32_matches_numpy[dropout_fixed_mask]": _DEVICE_MASK,
    "tests/test_ops.py::test_tensor_basics": "asserts that a new tensor is on the cpu",
    "tests/test_dispatch.py::test_every_variant_matches_its_reference":
        "compares the CPU settings (native loops, NumPy, emulated kernels) with the reference",
    "tests/test_errors.py::test_mixing_device_arrays_with_host_arrays_is_refused":
        "the strict module stands in for the device array module there",
    "tests/test_gpt.py::test_loss_gradient_matches_finite_differences_in_float64":
        "perturbs p.data with a host NumPy array",
    "tests/test_gpt.py::test_kv_cache_incremental_logits_match_the_full_forward":
        "builds a KVCache with its default xp=numpy",
    "tests/test_gpt.py::test_fused_kernel_path_matches_the_reference": "builds a KVCache with its default xp=numpy",
    "tests/test_kernels_attention.py::test_gradcheck_float64_through_the_emulated_kernels": "runs the CUDA kernels through the CPU emulator (MINIGRAD_KERNELS=emulate on cpu tensors)",
    "tests/test_kernels_attention.py::test_sdpa_uses_the_kernels_under_emulate_and_matches_the_reference_path": "runs the CUDA kernels through the CPU emulator (MINIGRAD_KERNELS=emulate on cpu tensors)",
    "tests/test_kernels_attention.py::test_gradcheck_through_sdpa_with_the_emulated_kernels": "runs the CUDA kernels through the CPU emulator (MINIGRAD_KERNELS=emulate on cpu tensors)",
    "tests/test_kernels_layernorm.py::test_gradcheck_float64_through_the_emulated_kernels": "runs the CUDA kernels through the CPU emulator (MINIGRAD_KERNELS=emulate on cpu tensors)",
    "tests/test_kernels_layernorm.py::test_functional_layer_norm_runs_the_kernels_under_emulate": "runs the CUDA kernels through the CPU emulator (MINIGRAD_KERNELS=emulate on cpu tensors)",
}
_KERNEL_EMULATOR_PARAMS = {"emulator", "emulate"}


def pytest_addoption(parser):
    parser.addoption("--device", choices=("cpu", "cuda"), default=None,
                     help="run the device suites with tensors on this device (default: $MINIGRAD_TEST_DEVICE or cpu)")


def _test_device(config) -> str:
    d = config.getoption("--device") or os.environ.get("MINIGRAD_TEST_DEVICE", "").strip().lower() or "cpu"
    if d not in ("cpu", "cuda"):
        raise pytest.UsageError(f"MINIGRAD_TEST_DEVICE={d!r}: expected cpu or cuda")
    return d


def _no_gpu_reason():
    """None when "cuda" can hold tensors here, else the one reason every device test is skipped for."""
    from minigrad import backend
    if backend.cuda_available():
        return None
    return ("no GPU: --device cuda needs CuPy and a CUDA device, and this machine has none "
            f"({backend._cupy_error or 'cupy not importable'}); MINIGRAD_STRICT=cuda stands in for one")


@pytest.hookimpl(tryfirst=True)
def _default_stop_signals():
    """The tests of Ctrl-C, SIGTERM and SIGHUP (test_faults, test_train, test_seq2seq, test_distributed)
    assume the default dispositions. A suite started under nohup, or as a background job of a
    non-interactive shell, inherits SIGHUP or SIGINT ignored, and minigrad train rightly keeps an
    ignored signal ignored; so the suite puts the defaults back (its children inherit them)."""
    import signal

    defaults = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL, "SIGHUP": signal.SIG_DFL}
    for name, handler in defaults.items():
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, handler)


def pytest_configure(config):
    _default_stop_signals()
    _pick_hypothesis_seed(config)
    config._minigrad_device = _test_device(config)
    config._minigrad_skip_all = None
    if config._minigrad_device != "cuda":
        return
    from minigrad import backend
    config._minigrad_skip_all = _no_gpu_reason()
    if config._minigrad_skip_all is None:
        if backend.strict_stands_in_for_cuda():
            os.environ["MINIGRAD_KERNELS"] = "off"
        backend.set_default_device("cuda")


def _cpu_only_reason(item):
    path = os.path.basename(str(item.fspath))
    if path not in DEVICE_SUITES:
        return "--device cuda runs the device suites only; this file runs in the cpu suite"
    for key in (item.nodeid, item.nodeid.split("[")[0]):
        if key in CPU_ONLY:
            return CPU_ONLY[key]
    if "native_on" in item.fixturenames:
        return "the native CPU loops take NumPy arrays only (the cpu suite runs this)"
    if "strict_backend" in item.fixturenames:
        return "the strict backend stands in for a device in the cpu suite"
    params = getattr(getattr(item, "callspec", None), "params", {})
    if params.get("device") in _KERNEL_EMULATOR_PARAMS:
        return "the CPU-emulator half of the kernel tests runs in the cpu suite"
    return None


def pytest_collection_modifyitems(config, items):
    _pin_hypothesis_draws(items)
    if config._minigrad_device != "cuda":
        return
    for item in items:
        reason = config._minigrad_skip_all or _cpu_only_reason(item)
        if reason:   # first, so that it wins over a test's own skipif (pytest evaluates skipif marks first)
            item.add_marker(pytest.mark.skipif(True, reason=reason), append=False)


def pytest_report_header(config):
    from minigrad import backend
    d = config._minigrad_device
    if d == "cuda" and backend.strict_stands_in_for_cuda():
        line = "minigrad test device: cuda, served by the strict stand-in (MINIGRAD_STRICT=cuda)"
    else:
        line = f"minigrad test device: {d}" + (f" (every test skipped: {config._minigrad_skip_all})"
                                               if config._minigrad_skip_all else "")
    return [line] + [x for x in [_seed_line(config)] if x]


@pytest.fixture
def device(request) -> str:
    """The device the suite runs on ("cpu" or "cuda"): where host data without device= lands."""
    return request.config._minigrad_device


# ------------------------------------------------------------------ implementation switches
# Which implementation of an op runs is chosen by environment switches. This is the one place the
# tests set them: IMPLS names each choice; use_impl() applies one and records what really ran.
#   reference  the NumPy code everywhere (native loops off, kernels off)
#   native     the default CPU choice: the C++ loops of kernels/cpu where they take the arrays
#   emulate    layer_norm and attention through the CUDA kernels on the CPU emulator
# MINIGRAD_IMPL (minigrad/dispatch.py) picks reference or auto; the two older switches pick among
# the variants in auto mode.
IMPLS = {
    "reference": {"MINIGRAD_IMPL": "reference", "MINIGRAD_CPU_NATIVE": "0", "MINIGRAD_KERNELS": "off"},
    "native": {"MINIGRAD_IMPL": "auto", "MINIGRAD_CPU_NATIVE": "1", "MINIGRAD_KERNELS": "auto"},
    "emulate": {"MINIGRAD_IMPL": "auto", "MINIGRAD_CPU_NATIVE": "1", "MINIGRAD_KERNELS": "emulate"},
}


class ImplRecord:
    """What ran under use_impl(): calls that got the native library, and kernel launcher look-ups."""

    def __init__(self, name):
        self.name, self.native, self.kernels = name, 0, 0

    def ran(self, variant):
        return {"native": self.native, "emulate": self.kernels}[variant] > 0


def use_impl(monkeypatch, name) -> ImplRecord:
    """Switch every op to implementation ``name`` (a key of IMPLS) for the rest of the test.
    Skips, saying why, when that implementation cannot be built here."""
    import shutil
    import warnings

    from minigrad import dispatch
    for k, v in IMPLS[name].items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(dispatch, "_impl", IMPLS[name]["MINIGRAD_IMPL"])   # read from the env at import only
    if name != "reference" and strict.enabled():
        pytest.skip("the strict backend's arrays are not numpy arrays: no native loop or emulated kernel takes them")
    if name != "reference":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dispatch.cpu_native() is None:
                pytest.skip("the native CPU library could not be built here (no usable C++ compiler)")
    if name == "emulate" and shutil.which("g++") is None:
        pytest.skip("no g++: the CPU emulator cannot build the kernels")
    rec = ImplRecord(name)
    real_native, real_launchers = dispatch.cpu_native, dispatch.launchers

    def cpu_native(*arrays):
        lib = real_native(*arrays)
        rec.native += lib is not None
        return lib

    def launchers():
        rec.kernels += 1
        return real_launchers()
    monkeypatch.setattr(dispatch, "cpu_native", cpu_native)
    monkeypatch.setattr(dispatch, "launchers", launchers)
    return rec


# ---------------------------------------------------------------- a tiny corpus for the training commands

# 160 lines, 4 speakers, 34 distinct characters: a char-level run of a few steps trains on it in seconds
CORPUS = "".join(
    f"{w}: {'To be, or not to be, that is the question' if i % 3 else 'Whether tis nobler in the mind'}.\n"
    for i, w in enumerate(["HAMLET", "OPHELIA", "POLONIUS", "LAERTES"] * 40))


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """CORPUS in a file; prepared data is cached inside tmp_path, not in the user's cache."""
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path
