"""Shared test settings: the device parameter and the one table of tolerances (ARCHITECTURE.md
s. 10)."""
import os

import numpy as np
import pytest

from minideeplab.device import gpu_available

# Kernels on emu run in checking mode in both suites (tests/, grad_checks/): an out-of-bounds
# access or a deadlock raises instead of giving numbers (emu/runner.py). MINIDEEPLAB_EMU_CHECK=0
# turns it off.
os.environ.setdefault("MINIDEEPLAB_EMU_CHECK", "1")

# Relative tolerances of a result against an independent reference.
TOL = {
    np.dtype("float64"): dict(rtol=1e-10, atol=1e-12),
    # float32 forward; a sum of k terms grows the rounding error like sqrt(k) * 6e-8.
    np.dtype("float32"): dict(rtol=1e-5, atol=1e-6),
    # float32 long reductions (BN statistics, convolutions over hundreds of taps).
    "float32_long": dict(rtol=1e-4, atol=1e-5),
}

DEVICES = ["cpu", "emu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no GPU visible to CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def assert_close(actual, expected, dtype=None, kind=None):
    """Compare with the tolerance of ``dtype`` (or of ``kind``, a key of TOL)."""
    from minideeplab.device import get_device
    actual = get_device("cpu").asarray(actual)
    key = kind or np.dtype(dtype or actual.dtype)
    np.testing.assert_allclose(actual, np.asarray(expected), **TOL[key])


@pytest.fixture(autouse=True)
def numpy_path_threads(monkeypatch):
    """MINIDEEPLAB_TEST_THREADS=n: the NumPy path on n threads (BLAS on one), every op split
    however small its work, a depthwise conv's images one to a chunk (tests/test_threads.py runs
    the cpu suites so)."""
    n = os.environ.get("MINIDEEPLAB_TEST_THREADS")
    if not n:
        yield
        return
    from minideeplab import threads
    split_everything(monkeypatch)
    with threads.limit(int(n)):
        yield


def split_everything(monkeypatch):
    """Every op split over the threads however small its work; a depthwise conv's images one to
    a chunk, so that its split over chunks runs too."""
    from minideeplab import threads
    from minideeplab.functional import conv
    monkeypatch.setattr(threads, "MIN_WORK", 1)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
