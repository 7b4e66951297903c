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


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_keeps_nan_as_numpy_does(device, dtype):
    """One answer on every device: the forward keeps NaN (np.maximum), the backward is
    gy * (y > 0), so a NaN or infinite gy gives NaN where the unit is off, and 0 * finite gy = 0
    where y is NaN."""
    nan, inf = np.nan, np.inf
    x = np.array([nan, nan, inf, -inf, 2.0, -3.0, 0.0, -1.0, 1.0, -2.0], dtype)
    gy = np.array([1.0, nan, 2.0, 3.0, nan, nan, inf, -inf, inf, 4.0], dtype)
    t = Tensor(x, requires_grad=True, device=device)
    y = F.relu(t)
    y.backward(get_device(device).asarray(gy))
    np.testing.assert_array_equal(y.numpy(), [nan, nan, inf, 0, 2, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(get_device("cpu").asarray(t.grad),
                                  [0, nan, 2, 0, nan, nan, nan, nan, inf, 0])


def test_relu_of_an_empty_batch_is_empty(device):
    t = Tensor(np.zeros((0, 3, 4, 4), np.float32), requires_grad=True, device=device)
    y = F.relu(t)
    y.backward(get_device(device).asarray(np.zeros((0, 3, 4, 4), np.float32)))
    assert y.shape == t.grad.shape == (0, 3, 4, 4) and y.dtype == np.float32


def test_a_launch_over_nothing_is_skipped(monkeypatch):
    """kernels.launch runs nothing for n = 0 or a grid with a 0 (CUDA refuses 0 blocks); the
    device is never asked."""
    from minideeplab.kernels import launch
    dev = get_device("emu")
    calls = []
    monkeypatch.setattr(type(dev), "launch", lambda self, *a: calls.append(a))
    x = np.zeros((0, 3), np.float32)
    launch(dev, "activation", "relu_forward", (x, x, 0), n=0)
    launch(dev, "reduce", "channel_sum", (x, np.zeros(0, np.float32), 2, 0, 1), grid=0)
    launch(dev, "norm", "bn_split_sums", (x, x, 2, 0, 1, 1), grid=(1, 0))
    assert calls == []
    launch(dev, "activation", "relu_forward", (np.ones(3, np.float32), np.ones(3, np.float32),
                                               3), n=3)
    assert len(calls) == 1


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.int32, np.bool_, np.complex64])
def test_one_dtype_rule_on_every_device(device, dtype):
    """An op with a kernel path takes float32 or float64 on every device, cpu included: one
    line naming the op, the argument and the dtype."""
    x, w = (Tensor(np.ones(shape, dtype), device=device) for shape in [(1, 2, 3, 3), (2, 2, 1, 1)])
    x32, w32 = (Tensor(np.ones(a.shape, np.float32), device=device) for a in (x, w))
    name = np.dtype(dtype).name
    rule = "; the ops with kernels take float32 or float64 on every device$"
    for call, message in [(lambda: F.relu(x), f"^relu: x has dtype {name}"),
                          (lambda: F.conv2d(x, w32), f"^conv2d: x has dtype {name}"),
                          (lambda: F.conv2d(x32, w), f"^conv2d: w has dtype {name}"),
                          (lambda: F.resize_bilinear(x, (5, 5)),
                           f"^resize_bilinear: x has dtype {name}"),
                          (lambda: F.global_avg_pool(x), f"^global_avg_pool: x has dtype {name}"),
                          (lambda: F.dropout(x, 0.5, True), f"^dropout: x has dtype {name}"),
                          (lambda: F.softmax_cross_entropy(x, np.zeros((1, 3, 3), np.int64)),
                           f"^softmax_cross_entropy: logits has dtype {name}"),
                          (lambda: channel_sum(x.data, device),
                           f"^channel_sum: x has dtype {name}")]:
        with pytest.raises(ValueError, match=message + rule):
            call()


def test_the_array_ops_stay_general(device):
    """functional/basic.py's ops run through xp on every device and take what it takes."""
    a = Tensor(np.arange(6, dtype=np.int64).reshape(2, 3), device=device)
    np.testing.assert_array_equal((a + a * a).numpy(), [[0, 2, 6], [12, 20, 30]])
    assert F.sum(Tensor(np.ones(4, np.float16), device=device)).dtype == np.float16


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
