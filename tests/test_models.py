"""The paper's networks: shapes at 513x513 (shape-only pass), parameter counts, output-stride
switching, checkpoint round trips, and a tiny model's forward + backward on every device."""
import json

import numpy as np
import pytest

import minideeplab as mdl
import minideeplab.functional as F
from minideeplab import flops
from minideeplab.models import deeplabv3plus
from tests.conftest import assert_close

TINY = dict(width=0.0625, middle_blocks=1, resnet_units=(2, 1, 1, 3), aspp_channels=8,
            low_level_channels=4, num_classes=3, dropout=0.0, bn_momentum=0.1)


@pytest.fixture(scope="module")
def built():
    return {bb: deeplabv3plus(bb) for bb in ("xception65", "resnet101")}


@pytest.fixture
def full(built):
    """The full-size networks (built once per module), each at its built output stride 16 for
    every test, whatever an earlier test switched it to."""
    return {bb: model.set_output_stride(16) for bb, model in built.items()}


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_shapes_at_513(full, backbone, output_stride):
    model = full[backbone].set_output_stride(output_stride)
    logits, _ = flops.trace(model, (1, 3, 513, 513))
    assert logits.shape == (1, 21, 513, 513)
    (low_level, features), _ = flops.trace(model.backbone, (1, 3, 513, 513))
    assert low_level.shape == (1, 256, 129, 129)
    size = {8: 65, 16: 33, 32: 17}[output_stride]
    assert features.shape == (1, 2048, size, size)


# Parameters (weights, biases, BN gamma and beta; not the running statistics) at 21 classes;
# the README's table lists them with their Multiply-Adds.
@pytest.mark.parametrize("backbone, separable, decoder, count", [
    ("xception65", True, True, 41_055_413),
    ("xception65", True, False, 40_892_485),
    ("xception65", False, True, 54_711_461),
    ("resnet101", False, True, 59_468_085),
    ("resnet101", False, False, 58_164_437),
])
def test_parameter_counts(full, backbone, separable, decoder, count):
    model = (full[backbone] if decoder and separable == (backbone == "xception65") else
             deeplabv3plus(backbone, decoder=decoder, separable_aspp=separable))
    assert sum(p.size for p in model.parameters()) == count


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
def test_set_output_stride_changes_rates_not_weights(backbone):
    model = deeplabv3plus(backbone, **TINY)
    before = model.state_dict()
    for output_stride, size in [(8, 9), (32, 3), (16, 5)]:
        model.set_output_stride(output_stride)
        assert flops.trace(model.backbone, (1, 3, 65, 65))[0][1].shape[2] == size
        after = model.state_dict()
        assert after.keys() == before.keys()
        assert all(np.array_equal(after[k], before[k]) for k in before)
    assert [conv.dilation for conv in (b.depthwise.conv if hasattr(b, "depthwise") else b.conv
                                       for b in model.aspp.atrous)] == [6, 12, 18]
    with pytest.raises(ValueError, match="output_stride must be one of"):
        model.set_output_stride(4)


def test_config_rebuilds_the_model():
    model = deeplabv3plus("resnet101", output_stride=8, **TINY)
    config = json.loads(json.dumps(model.config))
    assert config["output_stride"] == 8
    copy = deeplabv3plus(**config)
    assert all(np.array_equal(v, copy.state_dict()[k]) for k, v in model.state_dict().items())


def test_wrong_checkpoint_shape_names_the_parameter():
    small = deeplabv3plus(**TINY).state_dict()
    other = deeplabv3plus(**dict(TINY, num_classes=5))
    with pytest.raises(ValueError, match=r"logits\.weight has shape \(5, 8, 1, 1\).*\(3, 8, 1"):
        other.load_state_dict(small)
    with pytest.raises(ValueError, match="backbone must be"):
        deeplabv3plus("vgg16")


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
def test_tiny_forward_backward_matches_cpu(device, backbone):
    """Training-mode forward, loss and every gradient (and the BN statistics it updates) agree
    with the NumPy path, in float64 so any difference is a bug, not rounding."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 33, 33))
    labels = rng.integers(0, 3, (2, 33, 33))
    results = []
    for dev in ("cpu", device):
        model = deeplabv3plus(backbone, **TINY).to(dev, dtype=np.float64).train()
        logits = model(mdl.Tensor(x, device=dev))
        loss = F.softmax_cross_entropy(logits, mdl.Tensor(labels, device=dev))
        loss.backward()
        grads = {k: mdl.Tensor(p.grad).numpy() for k, p in model.named_parameters()}
        results.append((logits.numpy(), grads, model.state_dict()))
    (y0, g0, s0), (y1, g1, s1) = results
    assert y0.shape == (2, 3, 33, 33)
    assert_close(y1, y0)
    for k in g0:
        assert_close(g1[k], g0[k])
    for k in s0:  # parameters and the running statistics the training step updated
        assert_close(s1[k], s0[k])
