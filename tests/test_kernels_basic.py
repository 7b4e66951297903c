"""ReLU and the per-channel sum on every device against independent NumPy references
(ARCHITECTURE.md s. 10: shapes that are not multiples of the block size, batch 1, a 1x1 map), the
refusal of arrays too large for the kernels' 32-bit indices, ``loader.kernel_source`` and the
comment that every kernel starts with (ARCHITECTURE.md s. 5)."""
import re

import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab import Tensor
from minideeplab.device import get_device
from minideeplab.functional.reduce import channel_sum
from minideeplab.kernels import MAX_GRID, loader
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


def test_the_size_limit_keeps_grid_stride_indices_in_an_int():
    # The largest size for which index + gridDim.x * blockDim.x (MAX_GRID blocks of up to 1024
    # threads) cannot overflow an int.
    assert loader.MAX_ELEMENTS + MAX_GRID * 1024 == np.iinfo(np.int32).max


@pytest.mark.parametrize("device", ["emu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_arrays_beyond_the_limit_are_refused(device, monkeypatch):
    # A limit of 40 elements stands in for the real one: an array above it would take 8 GB.
    monkeypatch.setattr(loader, "MAX_ELEMENTS", 40)
    y = F.relu(Tensor(-np.ones(40), device=device))
    np.testing.assert_array_equal(get_device("cpu").asarray(y.data), np.zeros(40))
    with pytest.raises(ValueError, match=r"kernel relu_forward: argument 'x' \(const real\*\): "
                                         r"shape \(41,\) has 41 elements, more than the 40"):
        F.relu(Tensor(np.ones(41), device=device))


TINY = """// A comment about the file, apart from the kernel.

#define SCALE 2
// One thread: y[i] = SCALE * x[i].
  // Launch: one block.
extern "C" __global__ void twice(const real* x, real* y,
                                 int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {  // a brace in a comment: }
    y[i] = SCALE * x[i];
  }
}
/* __global__ void hidden(real* y) { */
extern "C" __global__ void zero(real* y) { y[0] = 0; }
"""


def test_kernel_source_is_the_kernel_with_its_comment(tmp_path):
    path = tmp_path / "tiny.cu"
    path.write_text(TINY)
    assert loader.kernel_source(str(path), "twice") == "\n".join(TINY.split("\n")[3:11])
    assert loader.kernel_source(str(path), "zero") == (
        'extern "C" __global__ void zero(real* y) { y[0] = 0; }')
    with pytest.raises(ValueError, match=r"kernel family '.*tiny.cu' \(tiny.cu\) has no kernel or "
                                         r"helper 'hidden'; it has \['twice', 'zero'\]"):
        loader.kernel_source(str(path), "hidden")
    with pytest.raises(ValueError, match=r"'conv' \(conv.cu\) has no kernel or helper "
                                         r"'relu_forward'; it has \['block_tree_sum', 'col2im', "):
        loader.kernel_source("conv", "relu_forward")
    # A helper of an included header: the lines of block_reduce.cuh from its comment to its end.
    helper = (loader.KERNEL_DIR / "block_reduce.cuh").read_text().split("\n")
    start = next(i for i, line in enumerate(helper) if line.startswith("// The sum of v"))
    assert loader.kernel_source("reduce", "block_tree_sum") == "\n".join(helper[start:]).rstrip()


@pytest.mark.parametrize("family", sorted(p.stem for p in loader.KERNEL_DIR.glob("*.cu")))
def test_every_kernel_says_what_a_thread_does_its_launch_and_bytes(family):
    for name in loader.read_source(family, np.float32).kernels:
        comment = loader.kernel_source(family, name).split('extern "C"')[0]
        assert re.search(r"one (thread|block)", comment, re.IGNORECASE), (family, name)
        assert "Launch:" in comment and "Bytes per" in comment, (family, name)
