"""The NumPy path's threads (minideeplab/threads.py): how ``over`` splits, and the cpu suites
with every op split over three threads."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import minideeplab.functional as F
from minideeplab import threads
from minideeplab.functional import conv
from minideeplab.models import deeplabv3plus
from minideeplab.tensor import Tensor
from tests.conftest import assert_close, split_everything

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks_of(n, size, count):
    """The blocks ``over`` hands out on ``count`` threads, with the thread that ran each."""
    seen, lock = [], threading.Lock()

    def fn(block):
        with lock:
            seen.append((block, threading.current_thread()))

    with threads.limit(count):
        threads.over(fn, n, size)
    return sorted(seen, key=lambda s: s[0].start)


def test_over_covers_each_index_once_one_block_a_thread():
    seen = blocks_of(10, 10 * threads.MIN_WORK, 3)
    assert [(b.start, b.stop) for b, _ in seen] == [(0, 3), (3, 6), (6, 10)]
    assert seen[0][1] is threading.main_thread()  # the caller takes the first block
    assert all(t is not threading.main_thread() for _, t in seen[1:])  # the pool the others


@pytest.mark.parametrize("n, size, blocks", [(10, 2 * threads.MIN_WORK - 1, 1),
                                             (10, 2 * threads.MIN_WORK, 2),
                                             (2, 10 * threads.MIN_WORK, 2),
                                             (1, 10 * threads.MIN_WORK, 1),
                                             (0, 10 * threads.MIN_WORK, 0)])
def test_over_gives_each_block_at_least_min_work(n, size, blocks):
    assert len(blocks_of(n, size, 3)) == blocks


def test_an_error_in_any_block_is_raised_after_all_blocks_ran():
    done = []

    def fn(block):
        done.append(block.start)
        if block.start == 3:
            raise ValueError("block 3-6 failed")

    with threads.limit(3), pytest.raises(ValueError, match="block 3-6"):
        threads.over(fn, 10, 10 * threads.MIN_WORK)
    assert sorted(done) == [0, 3, 6]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_a_thread_count_that_is_not_a_positive_int_is_refused(bad):
    with pytest.raises(ValueError, match="positive int"):
        threads.set_count(bad)


def test_limit_sets_blas_to_one_thread_and_restores_both():
    before = [lib["num_threads"] for lib in threadpool_info()]
    with threads.limit(3):
        assert threads.count() == 3
        assert all(lib["num_threads"] == 1 for lib in threadpool_info())
    assert threads.count() == 1
    assert [lib["num_threads"] for lib in threadpool_info()] == before


def training_step(count):
    """The loss, parameters (BN's running statistics move) and gradients after a float64 forward
    and backward of a tiny DeepLabv3+, every op split over ``count`` threads."""
    model = deeplabv3plus(backbone="xception65", width=0.03, middle_blocks=1, aspp_channels=8,
                          low_level_channels=4, num_classes=3, output_stride=16, dropout=0.0,
                          seed=0).to("cpu", dtype=np.float64)
    model.train()
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 3, 33, 33)))
    labels = rng.integers(0, 3, (3, 33, 33))
    with threads.limit(count):
        loss = F.softmax_cross_entropy(model(x), labels)
        loss.backward()
    return [float(loss.item())] + [a for p in model.parameters() for a in (p.data, p.grad.data)]


def test_a_training_step_is_the_same_on_one_and_on_three_threads(monkeypatch):
    """Depthwise convs, batch norm and ReLU split without changing a bit; a conv's GEMMs split
    by rows, where BLAS may pick another kernel for the smaller GEMM: float64 round-off (grown
    through the backward to 3e-12 of a gradient)."""
    split_everything(monkeypatch)
    one, three = training_step(1), training_step(3)
    assert len(one) == len(three) > 100
    for a, b in zip(one, three):
        assert_close(b, a)


@pytest.mark.parametrize("op, cout, groups", [("TapConv2d", 5, 1),
                                              ("FlatDepthwiseConv2d", 4, 4)])
def test_taps_and_flat_depthwise_give_the_same_bits_on_any_number_of_threads(op, cout, groups,
                                                                            monkeypatch):
    """TapConv2d (an ASPP-like 3x3 at rate 3 on a 9x9 map) splits its forward and input gradient
    by images and its weight gradient by taps, FlatDepthwiseConv2d everything by channels: every
    number comes from the same calls."""
    split_everything(monkeypatch)
    monkeypatch.setattr(conv, "FLAT_MIN_WIDTH", 1)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 4, 9, 9)), rng.standard_normal((cout, 4 // groups, 3, 3))
    b, gy = np.ones(cout), rng.standard_normal((3, cout, 9, 9))
    runs = []
    for count in (1, 3):
        ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
        with threads.limit(count):
            y = F.atrous_conv2d(*ts, rate=3, groups=groups)
            assert type(y.creator).__name__ == op
            y.backward(gy)
        runs.append([y.numpy()] + [t.grad for t in ts])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_the_cpu_suites_pass_with_every_op_split_over_three_threads():
    """The conv, norm, autograd, model and gradient-check tests against their references (naive
    loops, SciPy, central differences), with tests/conftest.py's MINIDEEPLAB_TEST_THREADS=3."""
    suites = ["tests/test_conv.py", "tests/test_norm.py", "tests/test_nn.py",
              "tests/test_autograd.py", "tests/test_models.py", "grad_checks/test_conv.py",
              "grad_checks/test_norm.py", "grad_checks/test_basic.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-m", "not gpu", "-k", "not emu and not cuda", *suites], cwd=ROOT,
                         env=dict(os.environ, MINIDEEPLAB_TEST_THREADS="3"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "deselected" in run.stdout
