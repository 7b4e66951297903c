"""Softmax cross-entropy and dropout on every device. The loss is checked against a per-pixel
float64 reference built on ``scipy.special.logsumexp``/``softmax``; dropout against its definition
(Srivastava et al. 2014, inverted scaling)."""
import numpy as np
import pytest
from scipy import special

import minideeplab.functional as F
from minideeplab import Tensor
from minideeplab.device import get_device
from minideeplab.emu.runner import check_mode
from tests.conftest import assert_close

DTYPES = [np.float32, np.float64]


def reference(logits, labels, ignore=255):
    """Mean of -log softmax[label] over counted pixels, and its gradient, pixel by pixel."""
    x = logits.astype(np.float64)
    N, C, H, W = x.shape
    loss, grad, count = 0.0, np.zeros_like(x), 0
    for n, i, j in np.ndindex(N, H, W):
        if labels[n, i, j] == ignore:
            continue
        count += 1
        loss -= x[n, labels[n, i, j], i, j] - special.logsumexp(x[n, :, i, j])
        grad[n, :, i, j] = special.softmax(x[n, :, i, j])
        grad[n, labels[n, i, j], i, j] -= 1
    return (loss / count, grad / count) if count else (0.0, grad)


def run(device, logits, labels, **kw):
    t = Tensor(logits, requires_grad=True, device=device)
    loss = F.softmax_cross_entropy(t, labels, **kw)
    loss.backward()
    return loss.numpy(), get_device("cpu").asarray(t.grad)


def case(shape, dtype, seed=0, ignored=0.2, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    labels[rng.random(labels.shape) < ignored] = 255
    return logits, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (1, 21, 1, 1), (3, 2, 17, 16)])
def test_matches_reference(device, shape, dtype):
    logits, labels = case(shape, dtype)
    loss, grad = run(device, logits, labels)
    ref_loss, ref_grad = reference(logits, labels)
    assert loss.dtype == grad.dtype == dtype
    assert_close(loss, ref_loss, dtype=dtype)
    assert_close(grad, ref_grad, dtype=dtype)


def test_non_contiguous_logits(device):
    logits, labels = case((2, 3, 4, 5), np.float64)
    strided = np.asfortranarray(logits)[:, :, :, :]
    loss, grad = run(device, strided, labels)
    ref_loss, ref_grad = reference(logits, labels)
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)


def test_labels_as_tensor_or_uint8_and_other_ignore_index(device):
    logits, labels = case((2, 4, 3, 5), np.float64)
    labels[labels == 255] = 3  # class 3 is now the ignored one
    ref = reference(logits, labels, ignore=3)
    for lab in (Tensor(labels, device=device), labels.astype(np.uint8)):
        loss, grad = run(device, logits, lab, ignore_index=3)
        assert_close(loss, ref[0])
        assert_close(grad, ref[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_gives_zero_not_nan(device, dtype):
    logits = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(dtype)
    loss, grad = run(device, logits, np.full((2, 4, 4), 255))
    assert loss == 0 and not np.isnan(loss)
    np.testing.assert_array_equal(grad, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits_are_finite(device, dtype):
    """Logits of +-1e4 overflow exp without the max subtraction."""
    logits, labels = case((2, 3, 4, 5), dtype, scale=1.0)
    logits = np.where(logits > 0, 1e4, -1e4).astype(dtype)
    loss, grad = run(device, logits, labels)
    ref_loss, ref_grad = reference(logits, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert_close(loss, ref_loss, dtype=dtype)
    assert_close(grad, ref_grad, dtype=dtype)


@pytest.mark.parametrize("bad", [7, -1, 256])
def test_label_out_of_range_names_the_value(device, bad):
    logits, labels = case((1, 4, 2, 3), np.float32)
    labels[0, 1, 2] = bad
    with pytest.raises(ValueError, match=rf"label {bad} outside \[0, 4\)"):
        F.softmax_cross_entropy(Tensor(logits, device=device), labels)


def test_unchecked_device_labels_out_of_range_give_nan():
    """Outside the checking mode, labels already on a kernel device are not checked (that would
    be a device-to-host sync in every step): the kernels give their pixels a NaN loss and
    gradient. Labels from the host are checked before they move."""
    logits, labels = case((1, 4, 2, 3), np.float32)
    labels[0, 1, 2] = 7
    t = Tensor(logits, requires_grad=True, device="emu")
    with check_mode(False):
        loss = F.softmax_cross_entropy(t, Tensor(labels, device="emu"))
        loss.backward()
        assert np.isnan(loss.item()) and np.isnan(t.grad).any()
        with pytest.raises(ValueError, match=r"label 7 outside \[0, 4\)"):
            F.softmax_cross_entropy(t, labels)


def test_bad_shapes_raise(device):
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 4, 5\)"):
        F.softmax_cross_entropy(Tensor(np.zeros((2, 3, 4, 4)), device=device),
                                np.zeros((2, 4, 5), int))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4)])
def test_no_pixels_give_zero_and_an_empty_gradient(device, shape):
    """An empty batch counts no pixel, as an all-ignored one: the loss is +0 (not 0 / 0, and not
    -0 on one device and +0 on another), the gradient empty."""
    loss, grad = run(device, np.zeros(shape, np.float32), np.zeros(shape[:1] + shape[2:], int))
    assert loss == 0 and not np.signbit(loss) and loss.dtype == np.float32
    assert grad.shape == shape


def test_no_classes_are_refused(device):
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: logits must be \(N, C, H, W\) "
                                         r"with C >= 1 classes .*got \(2, 0, 4, 4\)"):
        F.softmax_cross_entropy(Tensor(np.zeros((2, 0, 4, 4)), device=device),
                                np.full((2, 4, 4), 255))


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_logits(device, dtype):
    """A NaN or infinite logit of a counted pixel makes the loss and that pixel's gradient NaN
    on every device; one of an ignored pixel reaches neither (its gradient is 0): the result is
    the reference's over the other pixels."""
    logits, labels = case((1, 3, 2, 4), dtype, ignored=0)
    labels[0, 0, :2] = 255
    logits[0, :, 0, 0] = [np.nan, 1.0, 2.0]  # ignored
    logits[0, 1, 0, 1] = np.inf  # ignored
    ref_loss, ref_grad = reference(logits, labels)
    loss, grad = run(device, logits, labels)
    assert_close(loss, ref_loss, dtype=dtype)
    assert_close(grad, ref_grad, dtype=dtype)
    np.testing.assert_array_equal(grad[0, :, 0, :2], 0)
    for bad in (np.nan, np.inf):
        counted = logits.copy()
        counted[0, 2, 1, 3] = bad
        loss, grad = run(device, counted, labels)
        assert np.isnan(loss) and np.isnan(grad[0, :, 1, 3]).all()


@pytest.mark.parametrize("dtype", [np.float16, np.int64])
def test_logits_of_another_dtype_are_refused(device, dtype):
    with pytest.raises(ValueError, match=rf"^softmax_cross_entropy: logits has dtype "
                                         rf"{np.dtype(dtype).name}; the ops with kernels take "
                                         r"float32 or float64 on every device$"):
        F.softmax_cross_entropy(Tensor(np.zeros((1, 3, 2, 2), dtype), device=device),
                                np.zeros((1, 2, 2), int))


# -- dropout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_training(device, dtype):
    x = np.random.default_rng(0).uniform(1, 2, (4, 8, 50, 50)).astype(dtype)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    F.seed(0)
    t = Tensor(x, requires_grad=True, device=device)
    y = F.dropout(t, 0.3, training=True)
    y.backward(get_device(device).asarray(gy))
    y, gx = y.numpy(), get_device("cpu").asarray(t.grad)
    kept = y != 0
    assert y.dtype == gx.dtype == dtype
    assert_close(y[kept], x[kept] / 0.7, dtype=dtype)
    assert_close(gx[kept], gy[kept] / 0.7, dtype=dtype)
    np.testing.assert_array_equal(gx[~kept], 0)
    # 80,000 Bernoulli(0.7) draws: the kept fraction lies within 5 standard deviations of 0.7.
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.7 * 0.3 / kept.size)


def test_dropout_seed_reproduces_masks(device):
    x = Tensor(np.ones((3, 5, 7), np.float32), device=device)
    F.seed(3)
    a, b = F.dropout(x, 0.5, True).numpy(), F.dropout(x, 0.5, True).numpy()
    F.seed(3)
    np.testing.assert_array_equal(F.dropout(x, 0.5, True).numpy(), a)
    assert (a != b).any()  # the generator advances between calls


def test_dropout_same_masks_on_cpu_and_emu():
    x = np.ones((2, 3, 9, 9))
    F.seed(5)
    masks = [F.dropout(Tensor(x, device=d), 0.4, True).numpy() for d in ("cpu", "emu")]
    np.testing.assert_array_equal(*masks)


def test_dropout_eval_and_p0_are_identity_and_bad_p_raises(device):
    x = Tensor(np.arange(6.0).reshape(2, 3), device=device)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"\[0, 1\), got {p}"):
            F.dropout(x, p, training=True)
