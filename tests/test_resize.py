"""Bilinear resize and global average pooling on every device, against SciPy's order-1 spline
interpolation (``scipy.ndimage.map_coordinates``) at PyTorch's source coordinates, closed forms,
and the adjoint (backward = transposed linear map, built column by column from the reference)."""
import numpy as np
import pytest
from scipy import ndimage

import minideeplab.functional as F
from minideeplab import Tensor
from minideeplab.device import get_device
from minideeplab.functional import resize
from minideeplab.kernels import launch
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]
# (in H, W) -> (out H, W): up, down, mixed, 1x1 both ways, identity, odd sizes.
CASES = [((5, 5), (1, 1)), ((1, 1), (5, 5)), ((4, 6), (9, 13)), ((7, 9), (4, 5)),
         ((6, 3), (6, 3)), ((9, 17), (33, 7))]


def source_coords(n_in, n_out, align_corners):
    """PyTorch's source coordinate of each output index (upsample_bilinear2d)."""
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        return o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0 * o
    return np.maximum((o + 0.5) * n_in / n_out - 0.5, 0)


def reference(x, size, align_corners):
    """Order-1 spline interpolation; mode 'nearest' repeats the edge past the last input."""
    ry = source_coords(x.shape[2], size[0], align_corners)
    rx = source_coords(x.shape[3], size[1], align_corners)
    grid = np.stack(np.meshgrid(ry, rx, indexing="ij"))
    x = x.astype(np.float64)
    return np.array([[ndimage.map_coordinates(plane, grid, order=1, mode="nearest")
                      for plane in img] for img in x])


def reference_backward(gy, in_shape, align_corners):
    """gx = A^T gy with A the reference's linear map, one basis image at a time."""
    H, W = in_shape[2:]
    A = np.stack([reference(np.eye(H * W)[k].reshape(1, 1, H, W), gy.shape[2:], align_corners)
                  .ravel() for k in range(H * W)], axis=1)
    flat = gy.astype(np.float64).reshape(-1, gy.shape[2] * gy.shape[3])
    return (flat @ A).reshape(in_shape)


def run(device, fn, x, gy_seed=1):
    t = Tensor(x, requires_grad=True, device=device)
    y = fn(t)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(x.dtype)
    y.backward(get_device(device).asarray(gy))
    return get_device("cpu").asarray(y.data), get_device("cpu").asarray(t.grad), gy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sizes", CASES, ids=str)
def test_resize_matches_reference(device, sizes, align_corners, dtype):
    (H, W), size = sizes
    x = np.random.default_rng(0).standard_normal((2, 3, H, W)).astype(dtype)
    y, gx, gy = run(device, lambda t: F.resize_bilinear(t, size, align_corners), x)
    assert y.shape == (2, 3) + size and y.dtype == gx.dtype == dtype
    assert_close(y, reference(x, size, align_corners), dtype=dtype)
    assert_close(gx, reference_backward(gy, x.shape, align_corners), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_4x_upsampling_33_to_129(device, dtype):
    """align_corners=True maps output 4k onto input k exactly (DeepLab's 33 -> 129): outputs
    4k + j are (1 - j/4) x[k] + (j/4) x[k + 1]. Batch 1, one channel."""
    x = np.random.default_rng(0).standard_normal((1, 1, 33, 33)).astype(dtype)
    y, gx, gy = run(device, lambda t: F.resize_bilinear(t, (129, 129)), x)
    np.testing.assert_array_equal(y[..., ::4, ::4], x)
    x64 = x.astype(np.float64)
    assert_close(y[..., 1::4, ::4], 0.75 * x64[..., :-1, :] + 0.25 * x64[..., 1:, :], dtype=dtype)
    assert_close(y[..., ::4, 2::4], 0.5 * x64[..., :, :-1] + 0.5 * x64[..., :, 1:], dtype=dtype)
    # Backward: the summed gradient is conserved (each output's weights sum to 1).
    assert_close(gx.sum(), gy.astype(np.float64).sum(), kind="float32_long" if dtype ==
                 np.float32 else None, dtype=dtype)


def test_linear_functions_are_reproduced(device):
    """Bilinear interpolation reproduces an affine image exactly at every source coordinate."""
    i, j = np.meshgrid(np.arange(7.0), np.arange(10.0), indexing="ij")
    x = (2 * i - 3 * j + 1)[None, None]
    y = F.resize_bilinear(Tensor(x, device=device), (19, 4), align_corners=True).numpy()
    ri, rj = source_coords(7, 19, True), source_coords(10, 4, True)
    assert_close(y[0, 0], 2 * ri[:, None] - 3 * rj[None, :] + 1)


def test_bad_arguments_raise(device):
    x = Tensor(np.zeros((2, 3, 4, 4)), device=device)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(0, 5\)"):
        F.resize_bilinear(x, (0, 5))
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        F.resize_bilinear(Tensor(np.zeros((3, 4, 4)), device=device), (8, 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 300, 1, 1), (3, 2, 33, 33)])
def test_global_avg_pool(device, shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y, gx, gy = run(device, F.global_avg_pool, x)
    assert y.shape == shape[:2] + (1, 1) and y.dtype == dtype
    expected = np.array([[x[n, c].astype(np.float64).sum() / x[n, c].size
                          for c in range(shape[1])] for n in range(shape[0])])
    assert_close(y[:, :, 0, 0], expected, dtype=dtype)
    assert_close(gx, np.broadcast_to(gy / (shape[2] * shape[3]), shape), dtype=dtype)


@pytest.mark.parametrize("fn", [lambda x: F.resize_bilinear(x, (7, 3)), F.global_avg_pool])
@pytest.mark.parametrize("shape", [(0, 3, 5, 4), (2, 0, 5, 4)])
def test_empty_batches_and_channels_give_empty_results(device, fn, shape):
    y, gx, _ = run(device, fn, np.zeros(shape))
    assert y.shape[:2] == shape[:2] and y.size == 0 and gx.shape == shape


def test_global_avg_pool_of_no_pixels_is_refused(device):
    """A mean over no pixels is 0 / 0: refused, not NaN."""
    with pytest.raises(ValueError, match=r"^global_avg_pool: x must be \(N, C, H, W\) with at "
                                         r"least one pixel to average, got \(2, 3, 0, 4\)$"):
        F.global_avg_pool(Tensor(np.zeros((2, 3, 0, 4)), device=device))


# (in H, W) -> (out H, W) for the banded kernels: several bands each way (source rows of 150 and
# 300 reals), downsampling with rows nothing reads, align_corners both ways; rows of 6000 reals
# do not fit shared memory (the reference kernels run).
BANDED = [((40, 150), (129, 300)), ((300, 40), (50, 300)), ((2, 6000), (3, 6000))]


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sizes", BANDED, ids=str)
def test_banded_and_reference_kernels_agree(sizes, align_corners):
    """The op's banded kernels against the *_reference kernels (the same bits) and the NumPy
    path, on emu."""
    (H, W), size = sizes
    x = np.random.default_rng(0).standard_normal((1, 2, H, W))
    y, gx, gy = run("emu", lambda t: F.resize_bilinear(t, size, align_corners), x)
    y_np, gx_np, _ = run("cpu", lambda t: F.resize_bilinear(t, size, align_corners), x)
    assert_close(y, y_np, dtype=np.float64)
    assert_close(gx, gx_np, dtype=np.float64)
    dev, ac, (Ho, Wo) = get_device("emu"), align_corners, size
    fwd = resize._on_device(dev, x.dtype, resize._axis, H, Ho, ac) + resize._on_device(
        dev, x.dtype, resize._axis, W, Wo, ac)
    bwd = resize._on_device(dev, x.dtype, resize._by_input, H, Ho, ac) + resize._on_device(
        dev, x.dtype, resize._by_input, W, Wo, ac)
    y_ref, gx_ref = np.empty_like(y), np.empty_like(x)
    launch(dev, "resize", "resize_bilinear_forward_reference",
           (x, *fwd, y_ref, H, W, Ho, Wo, y_ref.size), n=y_ref.size)
    launch(dev, "resize", "resize_bilinear_backward_reference",
           (gy, *bwd, gx_ref, H, W, Ho, Wo, gx_ref.size), n=gx_ref.size)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(gx, gx_ref)
    banded = [resize._bands(H, Ho, ac, width, back) for width, back in ((W, False), (Wo, True))]
    if W == 6000:
        assert banded == [None, None]
    else:  # more than one band each way
        assert all(b is not None and b[1].shape[1] > 1 for b in banded), banded
