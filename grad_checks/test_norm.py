"""Float64 central-difference checks of batch norm for x, gamma and beta, on every device."""
import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab.device import get_device
from minideeplab.gradcheck import check_backward

rng = np.random.default_rng(0)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 1, 1)])
def test_batch_norm(device, shape, training):
    C = shape[1]
    running = [get_device(device).asarray(a) for a in (rng.standard_normal(C),
                                                       rng.uniform(0.5, 2, C))]
    inputs = [rng.standard_normal(shape) * 2 + 1, rng.standard_normal(C), rng.standard_normal(C)]
    check_backward(lambda x, g, b: F.batch_norm(x, g, b, *running, training), inputs,
                   device=device)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 1, 1)])
def test_batch_norm_relu(device, shape, training):
    C = shape[1]
    running = [get_device(device).asarray(a) for a in (rng.standard_normal(C),
                                                       rng.uniform(0.5, 2, C))]
    inputs = [rng.standard_normal(shape) * 2 + 1, rng.standard_normal(C), rng.standard_normal(C)]
    check_backward(lambda x, g, b: F.batch_norm(x, g, b, *running, training, relu=True), inputs,
                   device=device)
