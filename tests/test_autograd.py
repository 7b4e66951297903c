"""Autograd semantics (ARCHITECTURE.md section 4), checked against closed-form derivatives."""
import tracemalloc

import numpy as np
import pytest

import minideeplab as mdl
import minideeplab.functional as F
from minideeplab.device import gpu_available


def leaf(values, device="cpu"):
    return mdl.Tensor(np.asarray(values, dtype=np.float64), requires_grad=True, device=device)


def test_diamond_graph_accumulates_both_paths(device):
    # y = (2x) * (x + 3): dy/dx = 2(x + 3) + 2x = 4x + 6
    x = leaf([1.0, -2.0, 0.5], device)
    a, b = x * 2, x + 3
    (a * b).sum().backward()
    np.testing.assert_allclose(x.grad if device != "cuda" else x.grad.get(), [10.0, -2.0, 8.0])


def test_tensor_used_twice_and_deep_chain():
    x = leaf(3.0)
    y = x
    for _ in range(50):  # generation ordering must not recurse or revisit
        y = y * 1.0 + x * 0.0
    z = y * y  # dz/dx = 2x
    z.backward()
    assert x.grad == pytest.approx(6.0)


def test_grads_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2, 3 + 4])


def test_broadcasting_is_undone_in_backward():
    x = leaf(np.ones((3, 1)))
    b = leaf(np.ones(4))
    (x * b * 2).sum().backward()
    assert x.grad.shape == (3, 1) and b.grad.shape == (4,)
    np.testing.assert_allclose(x.grad, np.full((3, 1), 8.0))
    np.testing.assert_allclose(b.grad, np.full(4, 6.0))


def test_no_grad_records_nothing():
    x = leaf([1.0])
    with mdl.no_grad():
        y = x * 2
    assert y.creator is None and not y.requires_grad
    with pytest.raises(ValueError, match="does not require grad"):
        y.backward()


def test_constants_take_no_gradient_and_keep_dtype():
    x = mdl.Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    c = mdl.Tensor(np.ones(3, dtype=np.float32))
    y = (x * c + 1.5).sum()
    assert y.dtype == np.float32
    y.backward()
    assert c.grad is None and x.grad.dtype == np.float32


def test_non_scalar_backward_needs_a_gradient():
    x = leaf(np.ones((2, 3)))
    y = x * 2
    with pytest.raises(ValueError, match=r"non-scalar tensor of shape \(2, 3\)"):
        y.backward()
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))
    with pytest.raises(ValueError, match="already freed"):
        y.backward(np.ones((2, 3)))


def test_retain_graph_allows_a_second_backward():
    x = leaf(2.0)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad == pytest.approx(8.0)


def test_gradient_of_wrong_shape_is_rejected():
    y = leaf(np.ones(3)) * 2
    with pytest.raises(ValueError, match=r"gradient of shape \(2,\) for a tensor of shape \(3,\)"):
        y.backward(np.ones(2))


@pytest.mark.parametrize("fn, message", [
    (lambda: leaf(np.ones((2, 3))) + leaf(np.ones((4,))), r"\(2, 3\) and \(4,\) do not broadcast"),
    (lambda: F.matmul(leaf(np.ones((2, 3))), leaf(np.ones((2, 3)))), r"\(2, 3\) and \(2, 3\)"),
    (lambda: leaf(np.ones(6)).reshape(4, 2), r"cannot reshape \(6,\) into \(4, 2\)"),
    (lambda: leaf(np.ones((2, 3))).sum(axis=2), r"axis 2 out of range for shape \(2, 3\)"),
    (lambda: F.concat([leaf(np.ones((2, 3))), leaf(np.ones((3, 3)))], axis=1), "differ off"),
    (lambda: mdl.Tensor([1.0], device="tpu"), "unknown device 'tpu'"),
    (lambda: leaf([1.0]) + leaf([1.0], device="emu"), "different devices"),
])
def test_bad_input_raises_value_error(fn, message):
    with pytest.raises(ValueError, match=message):
        fn()


def test_getitem_rejects_advanced_indexing():
    with pytest.raises(TypeError, match="basic slicing"):
        leaf(np.ones(3))[[0, 1]]


@pytest.mark.skipif(gpu_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_says_why():
    with pytest.raises(ValueError, match="cuda"):
        mdl.Tensor([1.0], device="cuda")


def test_to_and_numpy_round_trip(device):
    x = mdl.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = x.to(device)
    assert y.device == device and y.requires_grad
    np.testing.assert_array_equal(y.to("cpu").numpy(), x.numpy())
    assert isinstance(y.numpy(), np.ndarray)


def test_the_graph_keeps_what_the_backward_needs_and_no_more():
    """conv (1x1) -> batch norm -> ReLU -> conv (1x1) -> sum: the backward needs the first conv's
    output (batch norm's input) and the ReLU's output (its mask, and the second conv's input);
    batch norm's output, which only the ReLU reads, and the second conv's output are freed when
    the forward is done (ARCHITECTURE.md s. 4). Measured with tracemalloc, which sees NumPy's
    allocations."""
    rng = np.random.default_rng(0)
    x = mdl.Tensor(rng.standard_normal((4, 8, 32, 32)))
    w1, w2 = (leaf(rng.standard_normal((8, 8, 1, 1))) for _ in range(2))
    gamma, beta = leaf(np.ones(8)), leaf(np.zeros(8))
    stats = [np.zeros(8), np.ones(8)]
    activation = x.data.nbytes
    tracemalloc.start()
    try:
        y = F.conv2d(F.relu(F.batch_norm(F.conv2d(x, w1), gamma, beta, *stats, True)), w2).sum()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert 2 * activation <= held < 2.05 * activation  # two activations and a few vectors
    y.backward()
    assert w1.grad.shape == w1.shape and gamma.grad.shape == gamma.shape
