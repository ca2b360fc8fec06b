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
    # reproducible examples (CI must not flake); no per-example deadline on a shared 2-core machine
    settings.register_profile("minigrad", deadline=None, derandomize=True, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile("minigrad")
except ImportError:   # hypothesis is a dev dependency; the files that need it importorskip it
    pass

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
