"""Float64 central-difference checks of resize, global average pooling, softmax cross-entropy
(logits; labels are constants) and dropout, on every device."""
import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab.gradcheck import check_backward

rng = np.random.default_rng(0)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("sizes", [((3, 4), (7, 5)), ((6, 5), (4, 2)), ((1, 1), (3, 2))], ids=str)
def test_resize_bilinear(device, sizes, align_corners):
    (H, W), size = sizes
    check_backward(lambda x: F.resize_bilinear(x, size, align_corners),
                   [rng.standard_normal((2, 3, H, W))], device=device)


def test_global_avg_pool(device):
    check_backward(F.global_avg_pool, [rng.standard_normal((2, 3, 4, 5))], device=device)


def test_softmax_cross_entropy(device):
    labels = rng.integers(0, 4, (2, 3, 5))
    labels[0, 1, :3] = 255
    # Labels in the closure: check_backward's central differences add 0 * eps to every input,
    # which would turn an integer label array into floats.
    check_backward(lambda x: F.softmax_cross_entropy(x, labels),
                   [rng.standard_normal((2, 4, 3, 5)) * 2], device=device)


def test_dropout(device):
    def fn(x):
        F.seed(1)  # the same mask at every evaluation
        return F.dropout(x, 0.4, training=True)
    check_backward(fn, [rng.standard_normal((3, 4, 5))], device=device)
