"""ReLU and the per-channel sum on every device against independent NumPy references
(DESIGN.md s. 9: shapes that are not multiples of the block size, batch 1, a 1x1 map)."""
import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab import Tensor
from minideeplab.device import get_device
from minideeplab.functional.reduce import channel_sum
from tests.conftest import assert_close

SHAPES = [(3, 5, 7, 11), (1, 1, 1, 1), (2, 3, 300, 1), (1, 2, 17, 19)]
DTYPES = [np.float32, np.float64]


def data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_backward(device, shape, dtype):
    x, gy = data(shape, dtype), data(shape, dtype, seed=1)
    t = Tensor(x, requires_grad=True).to(device)
    y = F.relu(t)
    y.backward(get_device(device).asarray(gy))
    positive = x > 0
    np.testing.assert_array_equal(get_device("cpu").asarray(y.data), np.where(positive, x, 0))
    np.testing.assert_array_equal(get_device("cpu").asarray(t.grad), np.where(positive, gy, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_sum(device, shape, dtype):
    x = data(shape, dtype)
    expected = np.zeros(shape[1])
    for c in range(shape[1]):  # an independent, float64, element-order reference
        expected[c] = np.sum(x[:, c].astype(np.float64))
    out = channel_sum(get_device(device).asarray(x), device)
    assert out.shape == (shape[1],) and out.dtype == dtype
    assert_close(out, expected, kind="float32_long" if dtype == np.float32 else None, dtype=dtype)
