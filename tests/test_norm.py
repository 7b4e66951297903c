"""Batch norm on every device against a naive per-channel float64 reference (Ioffe & Szegedy 2015,
Algorithm 1 and the chain rule of their Sec. 3) with PyTorch's running-statistic conventions."""
import re

import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab import Tensor
from minideeplab.device import get_device
from minideeplab.kernels import launch
from tests.conftest import assert_close

# Not multiples of the block size, batch 1, 1x1 maps, more channels than a block has threads,
# channels split over two blocks of the kernel path's sums (M = 4500).
SHAPES = [(3, 5, 7, 11), (1, 3, 17, 19), (4, 2, 1, 1), (2, 300, 1, 3), (2, 3, 45, 50)]
DTYPES = [np.float32, np.float64]


def data(shape, dtype, seed=0, scale=1.0, shift=0.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale + shift).astype(dtype)


def reference(x, gamma, beta, gy, eps=1e-5):
    """Per channel, in float64: output, batch mean, biased variance and the gradients obtained as
    the paper does, through d/dxhat, d/dvar and d/dmean."""
    x, gy = x.astype(np.float64), gy.astype(np.float64)
    y, gx = np.empty_like(x), np.empty_like(x)
    C = x.shape[1]
    mean, var, dgamma, dbeta = (np.empty(C) for _ in range(4))
    for c in range(C):
        v, g = x[:, c], gy[:, c]
        m = v.size
        mean[c] = v.sum() / m
        var[c] = ((v - mean[c]) ** 2).sum() / m
        xhat = (v - mean[c]) / np.sqrt(var[c] + eps)
        y[:, c] = gamma[c] * xhat + beta[c]
        dxhat = g * gamma[c]
        dvar = (dxhat * (v - mean[c])).sum() * -0.5 * (var[c] + eps) ** -1.5
        dmean = -dxhat.sum() / np.sqrt(var[c] + eps) + dvar * (-2 * (v - mean[c])).sum() / m
        gx[:, c] = dxhat / np.sqrt(var[c] + eps) + dvar * 2 * (v - mean[c]) / m + dmean / m
        dgamma[c], dbeta[c] = (g * xhat).sum(), g.sum()
    return y, mean, var, gx, dgamma, dbeta


def run(device, x, gamma, beta, gy, running, training, **kw):
    dev = get_device(device)
    ts = [Tensor(a, requires_grad=True, device=device) for a in (x, gamma, beta)]
    rm, rv = (dev.asarray(r.copy()) for r in running)
    y = F.batch_norm(*ts, rm, rv, training, **kw)
    y.backward(dev.asarray(gy))
    return [y.data] + [t.grad for t in ts] + [rm, rv]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_backward_and_running_stats(device, shape, dtype):
    x, gy = data(shape, dtype, shift=3.0), data(shape, dtype, seed=1)
    C = shape[1]
    gamma, beta = data(C, dtype, seed=2), data(C, dtype, seed=3)
    running = data(C, dtype, seed=4), data(C, dtype, seed=5) ** 2
    y, gx, dgamma, dbeta, rm, rv = run(device, x, gamma, beta, gy, running, True, momentum=0.3)
    ry, mean, var, rgx, rdgamma, rdbeta = reference(x, gamma, beta, gy)
    m = x.size // C
    kind = "float32_long" if dtype == np.float32 else None
    for actual, expected in [(y, ry), (gx, rgx), (dgamma, rdgamma), (dbeta, rdbeta),
                             (rm, 0.7 * running[0] + 0.3 * mean),
                             (rv, 0.7 * running[1] + 0.3 * var * m / (m - 1))]:
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype=dtype, kind=kind)


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_uses_running_stats_and_leaves_them(device, dtype):
    shape = (2, 3, 5, 4)
    x, gy = data(shape, dtype), data(shape, dtype, seed=1)
    gamma, beta = data(3, dtype, seed=2), data(3, dtype, seed=3)
    running = data(3, dtype, seed=4), data(3, dtype, seed=5) ** 2 + 0.5
    y, gx, dgamma, dbeta, rm, rv = run(device, x, gamma, beta, gy, running, False, eps=1e-3)
    b = (slice(None), None, None)
    std = np.sqrt(running[1].astype(np.float64) + 1e-3)[b]
    assert_close(y, (x - running[0][b]) / std * gamma[b] + beta[b], dtype=dtype)
    assert_close(gx, gy * gamma[b] / std, dtype=dtype)
    assert_close(dgamma, (gy * (x - running[0][b]) / std).sum(axis=(0, 2, 3)), dtype=dtype,
                 kind="float32_long" if dtype == np.float32 else None)
    assert_close(dbeta, gy.sum(axis=(0, 2, 3)), dtype=dtype,
                 kind="float32_long" if dtype == np.float32 else None)
    np.testing.assert_array_equal(get_device("cpu").asarray(rm), running[0])
    np.testing.assert_array_equal(get_device("cpu").asarray(rv), running[1])


def test_constant_channel_is_finite(device):
    x = np.full((2, 3, 4, 5), 7.0, np.float32)
    x[:, 1] = data((2, 4, 5), np.float32)  # one normal channel beside the constant ones
    gy = data(x.shape, np.float32, seed=1)
    y, gx, dgamma, dbeta, rm, rv = run(device, x, np.ones(3, np.float32),
                                       np.full(3, 0.5, np.float32), gy,
                                       (np.zeros(3, np.float32), np.ones(3, np.float32)), True)
    for a in (y, gx, dgamma, dbeta, rm, rv):
        assert np.isfinite(get_device("cpu").asarray(a)).all()
    assert_close(get_device("cpu").asarray(y)[:, 0], np.full((2, 4, 5), 0.5), dtype=np.float32)


def test_large_mean_keeps_precision_float32(device):
    """1e4 + unit noise in float32: E[x^2] - E[x]^2 would lose the variance entirely (x^2 ~ 1e8
    has an ulp of 8); the two-pass variance keeps it to float32 precision."""
    shape = (3, 4, 9, 10)
    x, gy = data(shape, np.float32, shift=1e4), data(shape, np.float32, seed=1)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, gx, _, _, _, rv = run(device, x, ones, zeros, gy, (zeros, ones), True, momentum=1.0)
    ry, _, var, rgx, _, _ = reference(x, ones, zeros, gy)
    m = x.size // 4
    assert_close(rv, var * m / (m - 1), kind="float32_long")
    # The float32 mean itself is rounded to ulp(1e4) / 2 = 5e-4: that, over a unit standard
    # deviation, bounds the error of y and dx.
    np.testing.assert_allclose(get_device("cpu").asarray(y), ry, atol=2e-3)
    np.testing.assert_allclose(get_device("cpu").asarray(gx), rgx, atol=2e-3)


def test_running_stats_as_tensors_are_updated_in_place(device):
    x = data((2, 3, 4, 4), np.float64)
    rm, rv = Tensor(np.zeros(3), device=device), Tensor(np.ones(3), device=device)
    for _ in range(2):
        F.batch_norm(Tensor(x, device=device), np.ones(3), np.zeros(3), rm, rv, True)
    assert_close(rm.data, 0.19 * x.mean(axis=(0, 2, 3)))  # (1 - 0.9^2) * batch mean


def test_bad_shapes_raise(device):
    x = Tensor(data((2, 3, 4, 4), np.float32), device=device)
    w, r = np.ones(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(4,\)"):
        F.batch_norm(x, np.ones(4, np.float32), w, r, r.copy(), True)
    r = get_device(device).asarray(r)  # running statistics live on the device (updated in place)
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm(Tensor(data((1, 3, 1, 1), np.float32), device=device), w, w, r, r.copy(), True)


def test_mixed_dtypes_are_refused_on_every_device(device):
    """The kernels take one real type, and so does every device: float64 running statistics or
    gamma beside float32 x are refused before anything is computed or updated."""
    dev = get_device(device)
    x = Tensor(data((2, 3, 4, 4), np.float32), device=device)
    w, rm, rv = np.ones(3, np.float32), dev.asarray(np.zeros(3)), dev.asarray(np.ones(3))
    with pytest.raises(ValueError, match=r"^batch_norm: running_mean and running_var must have "
                                         r"x's dtype float32 .*; got float64, float64$"):
        F.batch_norm(x, w, w, rm, rv, True)
    np.testing.assert_array_equal(get_device("cpu").asarray(rm), 0)  # nothing was updated
    with pytest.raises(ValueError, match=r"^batch_norm: gamma has dtype float64 but x float32; "
                                         r"an op takes one real dtype$"):
        F.batch_norm(x, np.ones(3), w, rm.astype(np.float32), rv.astype(np.float32), True)


# -- batch norm fused with the ReLU (batch_norm(..., relu=True)) -------------------------------
# A shape whose channels split over several blocks in the kernels' reductions (norm.splits).
SPLIT_SHAPE = (8, 5, 40, 40)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [SPLIT_SHAPE])
def test_fused_relu_forward_backward_and_running_stats(device, shape, dtype):
    x, gy = data(shape, dtype, shift=3.0), data(shape, dtype, seed=1)
    C = shape[1]
    gamma, beta = data(C, dtype, seed=2), data(C, dtype, seed=3)
    running = data(C, dtype, seed=4), data(C, dtype, seed=5) ** 2
    y, gx, dgamma, dbeta, rm, rv = run(device, x, gamma, beta, gy, running, True, momentum=0.3,
                                       relu=True)
    ry, mean, var, _, _, _ = reference(x, gamma, beta, gy)
    # The ReLU's chain rule: batch norm's backward of gy where its output is positive.
    _, _, _, rgx, rdgamma, rdbeta = reference(x, gamma, beta, gy * (ry > 0))
    m = x.size // C
    kind = "float32_long" if dtype == np.float32 else None
    for actual, expected in [(y, np.maximum(ry, 0)), (gx, rgx), (dgamma, rdgamma),
                             (dbeta, rdbeta), (rm, 0.7 * running[0] + 0.3 * mean),
                             (rv, 0.7 * running[1] + 0.3 * var * m / (m - 1))]:
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype=dtype, kind=kind)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), SPLIT_SHAPE])
def test_fused_relu_agrees_with_batch_norm_then_relu(device, shape, training):
    """float64: the fused op's numbers are batch_norm's followed by relu's, to round-off (on cpu
    bit for bit: the same operations in the same order)."""
    x, gy = data(shape, np.float64, shift=1.0, scale=2.0), data(shape, np.float64, seed=1)
    C = shape[1]
    gamma, beta = data(C, np.float64, seed=2), data(C, np.float64, seed=3)
    running = data(C, np.float64, seed=4), data(C, np.float64, seed=5) ** 2
    dev = get_device(device)
    results = []
    for relu in (False, True):
        ts = [Tensor(a, requires_grad=True, device=device) for a in (x, gamma, beta)]
        rm, rv = (dev.asarray(r.copy()) for r in running)
        y = F.batch_norm(*ts, rm, rv, training, relu=relu)
        y = y if relu else F.relu(y)
        y.backward(dev.asarray(gy))
        results.append([y.data] + [t.grad for t in ts] + [rm, rv])
    for fused, unfused in zip(*results):
        if device == "cpu":
            np.testing.assert_array_equal(fused, unfused)
        else:
            assert_close(fused, get_device("cpu").asarray(unfused))


def test_fused_relu_large_mean_keeps_precision_float32(device):
    """The split sums are taken about each channel's first element (shifted data): 1e4 + unit
    noise keeps its variance to float32 precision, as the two-pass statistics do."""
    shape = (3, 4, 9, 10)
    x, gy = data(shape, np.float32, shift=1e4), data(shape, np.float32, seed=1)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    y, _, _, _, _, rv = run(device, x, ones, zeros, gy, (zeros, ones), True, momentum=1.0,
                            relu=True)
    ry, _, var, _, _, _ = reference(x, ones, zeros, gy)
    m = x.size // 4
    assert_close(rv, var * m / (m - 1), kind="float32_long")
    np.testing.assert_allclose(get_device("cpu").asarray(y), np.maximum(ry, 0), atol=2e-3)


# -- empty arrays and NaN: one answer on every device --------------------------------------------

@pytest.mark.parametrize("relu", [False, True])
def test_training_on_an_empty_batch_says_why(device, relu):
    """Training statistics of zero values per channel do not exist: one line, nothing updated."""
    dev = get_device(device)
    rm, rv = dev.asarray(np.zeros(3, np.float32)), dev.asarray(np.ones(3, np.float32))
    w = np.ones(3, np.float32)
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        x = Tensor(np.zeros(shape, np.float32), device=device)
        message = (f"batch_norm: training needs more than one value per channel, got x of "
                   f"shape {shape}")
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            F.batch_norm(x, w, w, rm, rv, True, relu=relu)
    np.testing.assert_array_equal(get_device("cpu").asarray(rm), 0)


@pytest.mark.parametrize("relu", [False, True])
def test_eval_on_an_empty_batch_and_training_without_channels(device, relu):
    """Eval needs no batch statistics: an empty batch gives an empty output and gradient, and
    zero gamma and beta gradients (sums over nothing). Without channels, training has nothing to
    normalise: empty everything."""
    gamma, beta = data(3, np.float64, seed=2), data(3, np.float64, seed=3)
    out = run(device, np.zeros((0, 3, 5, 4)), gamma, beta, np.zeros((0, 3, 5, 4)),
              (np.zeros(3), np.ones(3)), False, relu=relu)
    y, gx, dgamma, dbeta, rm, rv = (get_device("cpu").asarray(a) for a in out)
    assert y.shape == gx.shape == (0, 3, 5, 4)
    for a, expected in [(dgamma, 0), (dbeta, 0), (rm, 0), (rv, 1)]:
        np.testing.assert_array_equal(a, np.full(3, expected))
    out = run(device, np.zeros((2, 0, 5, 4)), np.zeros(0), np.zeros(0), np.zeros((2, 0, 5, 4)),
              (np.zeros(0), np.ones(0)), True, relu=relu)
    assert [a.shape for a in out] == [(2, 0, 5, 4), (2, 0, 5, 4), (0,), (0,), (0,), (0,)]


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("relu", [False, True])
def test_nan_in_eval(device, relu):
    """Eval with fixed statistics, one NaN in x and non-finite values in gy: the reference is
    NumPy's arithmetic, element by element. y is NaN where x is; dx = a * gz with gz = gy (or,
    fused, gy * (z > 0)): it reads no x, so a NaN in x leaves dx finite there (not NaN * 0); a
    NaN or infinite gy gives NaN where the ReLU is off."""
    x = data((1, 2, 2, 3), np.float64)
    x[0, 0, 0, 0] = np.nan
    gy = data(x.shape, np.float64, seed=1)
    gy[0, 1, 0, :] = [np.nan, np.inf, -np.inf]
    gamma, beta = np.array([1.5, -2.0]), np.array([0.1, 0.2])
    running = np.array([0.3, -0.4]), np.array([2.0, 0.5])
    y, gx, dgamma, dbeta, _, _ = (get_device("cpu").asarray(a) for a in
                                  run(device, x, gamma, beta, gy, running, False, relu=relu))
    b = (slice(None), None, None)
    a = gamma / np.sqrt(running[1] + 1e-5)
    z = (x - running[0][b]) * a[b] + beta[b]
    gz = gy * (z > 0) if relu else gy
    np.testing.assert_allclose(y, np.maximum(z, 0) if relu else z, rtol=1e-12)
    np.testing.assert_allclose(gx, gz * a[b], rtol=1e-12)
    assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(gx[0, 0]).all()
    np.testing.assert_allclose(dbeta, gz.sum(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(dgamma, (gz * (x - running[0][b])).sum(axis=(0, 2, 3)) *
                               (a / gamma), rtol=1e-12)  # NaN where x or gy is


@pytest.mark.parametrize("relu", [False, True])
def test_nan_in_training_fills_its_channel(device, relu):
    """A NaN in x makes its channel's batch statistics NaN, so the channel's output, gradients
    and running statistics are NaN on every device (the fused ReLU keeps it, as np.maximum
    does); the other channel is untouched."""
    x = data((2, 2, 3, 3), np.float64)
    x[1, 0, 2, 1] = np.nan
    gy = data(x.shape, np.float64, seed=1)
    y, gx, dgamma, dbeta, rm, rv = (get_device("cpu").asarray(a) for a in run(
        device, x, np.ones(2), np.zeros(2), gy, (np.zeros(2), np.ones(2)), True, relu=relu))
    for a in (y[:, 0], gx[:, 0], dgamma[0], rm[0], rv[0]):
        assert np.isnan(a).all()
    for a in (y[:, 1], gx[:, 1], dgamma[1], dbeta, rm[1], rv[1]):
        assert np.isfinite(a).all()


# -- the reference kernels (one block per channel) ----------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_kernels_match_the_numpy_path(dtype):
    """channel_sum, bn_moments, bn_statistics, bn_forward; bn_moments, bn_backward_coefficients,
    bn_backward_dx: the readable versions of the kernel path's split kernels, on emu."""
    dev, shape = get_device("emu"), (2, 3, 45, 50)
    x, gy = data(shape, dtype, shift=3.0), data(shape, dtype, seed=1)
    N, C, L, M = shape[0], shape[1], shape[2] * shape[3], shape[0] * shape[2] * shape[3]
    gamma, beta = data(C, dtype, seed=2), data(C, dtype, seed=3)
    running = [data(C, dtype, seed=4), data(C, dtype, seed=5) ** 2]
    y_cpu, gx_cpu, dgamma_cpu, dbeta_cpu, rm_cpu, rv_cpu = run("cpu", x, gamma, beta, gy,
                                                               running, True)
    x3, gy3 = x.reshape(N, C, L), gy.reshape(N, C, L)
    sums, moments, stats = np.empty(C, dtype), np.empty((2, C), dtype), np.empty((3, C), dtype)
    launch(dev, "reduce", "channel_sum", (x3, sums, N, C, L), grid=C)
    launch(dev, "norm", "bn_moments", (x3, sums, M, x3, 1, moments, N, C, L), grid=C)
    launch(dev, "norm", "bn_statistics", (sums, moments, gamma, *running, stats, C, M, 0.1, 1e-5,
                                          1), n=C)
    y = np.empty_like(x3)
    launch(dev, "norm", "bn_forward", (x3, stats[0], stats[2], beta, y, C, L, y.size), n=y.size)
    launch(dev, "norm", "bn_moments", (x3, stats[0], 1, gy3, 0, moments, N, C, L), grid=C)
    coef, gx = np.empty((4, C), dtype), np.empty_like(x3)
    launch(dev, "norm", "bn_backward_coefficients", (moments, gamma, stats[1], coef, C, M, 1),
           n=C)
    launch(dev, "norm", "bn_backward_dx", (x3, gy3, stats[0], *coef[1:], gx, C, L, gx.size, 1),
           n=gx.size)
    kind = "float32_long" if dtype == np.float32 else np.dtype(dtype)
    for a, b in [(y.reshape(shape), y_cpu), (gx.reshape(shape), gx_cpu), (coef[0], dgamma_cpu),
                 (moments[0], dbeta_cpu), (running[0], rm_cpu), (running[1], rv_cpu)]:
        assert_close(a, b, kind=kind)
