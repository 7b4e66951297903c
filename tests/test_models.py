"""The paper's networks: shapes at 513x513 (shape-only pass), parameter counts, output-stride
switching, checkpoint round trips, and a tiny model's forward + backward on every device."""
import json

import numpy as np
import pytest

import minideeplab as mdl
import minideeplab.functional as F
from minideeplab import flops, nn
from minideeplab.models import deeplabv3plus
from minideeplab.models.aspp import ASPP
from minideeplab.models.xception import XceptionBlock
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
# the README's table lists them with their Multiply-Adds. ResNet with separable ASPP and decoder
# (the official default): the dense count less, by hand, 3 x (9*2048*256 + 512 - (9*2048 + 4096
# + 2048*256 + 512)) for the ASPP and 619,248 + 521,472 for the decoder's two convs.
@pytest.mark.parametrize("backbone, separable, decoder, count", [
    ("xception65", True, True, 41_055_413),
    ("xception65", True, False, 40_892_485),
    ("xception65", False, True, 54_711_461),
    ("resnet101", False, True, 59_468_085),
    ("resnet101", False, False, 58_164_437),
    ("resnet101", True, True, 59_468_085 - 3 * 4_171_776 - 619_248 - 521_472),
])
def test_parameter_counts(full, backbone, separable, decoder, count):
    model = (full[backbone] if decoder and separable else
             deeplabv3plus(backbone, decoder=decoder, separable_aspp=separable))
    assert sum(p.size for p in model.parameters()) == count


# -- the released blocks, against NumPy written from the official code's description ----------
def relu(x):
    return np.maximum(x, 0)


def naive_depthwise(x, w, stride, rate):
    """3x3 depthwise conv, "same" padding rate * (k - 1) / 2, as loops."""
    n, c, h, wd = x.shape
    k, p = w.shape[-1], rate * (w.shape[-1] - 1) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            for a in range(k):
                for b in range(k):
                    y[:, :, i, j] += (xp[:, :, i * stride + a * rate, j * stride + b * rate]
                                      * w[:, 0, a, b])
    return y


def bn_eval(x, bn):
    """Inference-mode batch norm from the layer's statistics and parameters."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + bn.eps)
            * bn.gamma.data.reshape(shape) + bn.beta.data.reshape(shape))


def pointwise(x, w, stride=1):
    return np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x[:, :, ::stride, ::stride])


def naive_separable(x, sep, released_preactivation):
    """core/xception.py's ``_separable_conv``: with ``activation_fn_in_separable_conv=False``
    ReLU, depthwise, BN, pointwise, BN; with True depthwise, BN, ReLU, pointwise, BN, ReLU."""
    act = (lambda v: v) if released_preactivation else relu
    conv = sep.depthwise.conv
    if released_preactivation:
        x = relu(x)
    y = act(bn_eval(naive_depthwise(x, conv.weight.data, conv.stride, conv.dilation),
                    sep.depthwise.bn))
    return act(bn_eval(pointwise(y, sep.pointwise.conv.weight.data), sep.pointwise.bn))


def randomize_batch_norm(module, rng):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.gamma.shape[0]
            m.gamma.data[:] = rng.uniform(0.5, 1.5, c)
            m.beta.data[:] = rng.uniform(-0.5, 0.5, c)
            m.running_mean[:] = rng.uniform(-0.5, 0.5, c)
            m.running_var[:] = rng.uniform(0.5, 1.5, c)


def test_xception_unit_by_hand():
    """One channel, one pixel, BN at identity statistics (eps 0): every step by hand. x = 3;
    conv 1: ReLU 3, depthwise x1 -> 3, pointwise x-1 -> -3, BN beta 1 -> -2; conv 2: ReLU 0,
    depthwise 0, BN beta -0.5 -> -0.5 (no ReLU before the pointwise), pointwise x-2 -> 1;
    conv 3: ReLU 1, depthwise x2 -> 2, pointwise x-2 -> -4. Residual -4 + identity 3 = -1, not
    ReLU'd. With a ReLU after each BN (the paper's Sec. 3.2 text) the residual is 0 and the unit
    gives 3: it could never lower the trunk."""
    unit = XceptionBlock(1, [1, 1, 1], 1, "sum").eval()
    for m in unit.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    taps = {"sep1": (1, -1, 0, 1), "sep2": (1, -2, -0.5, 0), "sep3": (2, -2, 0, 0)}
    for name, (depthwise, pw, depthwise_beta, pointwise_beta) in taps.items():
        sep = getattr(unit, name)
        sep.depthwise.conv.weight.data[:] = 0
        sep.depthwise.conv.weight.data[0, 0, 1, 1] = depthwise  # the only tap on a 1x1 map
        sep.pointwise.conv.weight.data[:] = pw
        sep.depthwise.bn.beta.data[:] = depthwise_beta
        sep.pointwise.bn.beta.data[:] = pointwise_beta
    y, low_level = unit(mdl.Tensor(np.full((1, 1, 1, 1), 3.0, np.float32)))
    assert y.numpy().item() == -1.0
    assert low_level.numpy().item() == 1.0


@pytest.mark.parametrize("cin, depths, stride, shortcut, preactivation, rates", [
    (4, [4, 4, 4], 1, "sum", True, (1, 1, 1)),       # middle flow
    (3, [5, 5, 6], 2, "conv", True, (1, 1, 1)),      # entry flow / exit block 1
    (4, [5, 5, 6], 1, "none", False, (1, 2, 4)),     # exit block 2, multi-grid
])
def test_xception_unit_matches_the_released_module(cin, depths, stride, shortcut, preactivation,
                                                   rates):
    rng = np.random.default_rng(1)
    unit = XceptionBlock(cin, depths, stride, shortcut, preactivation, rates, rng=rng)
    unit.configure(stride, 2)
    randomize_batch_norm(unit, rng)
    unit.eval().to(dtype=np.float64)
    x = rng.standard_normal((2, cin, 7, 7))
    y, inner = unit(mdl.Tensor(x))
    a = naive_separable(x, unit.sep1, preactivation)
    b = naive_separable(a, unit.sep2, preactivation)
    residual = naive_separable(b, unit.sep3, preactivation)
    if shortcut == "conv":  # 1x1 conv + BN on the unit's input as it came, not ReLU'd
        residual = residual + bn_eval(pointwise(x, unit.shortcut.conv.weight.data, stride),
                                      unit.shortcut.bn)
    elif shortcut == "sum":
        residual = residual + x
    assert_close(y.numpy(), residual)
    assert_close(inner.numpy(), b)
    assert [s.depthwise.conv.dilation for s in (unit.sep1, unit.sep2, unit.sep3)] == \
        [2 * r for r in rates]
    if preactivation:  # the residual branch and the sum can be negative
        assert (y.numpy() < 0).any() and (inner.numpy() < 0).any()
    else:
        assert (y.numpy() >= 0).all()


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
def test_low_level_features_are_the_official_pre_relu_end_point(backbone):
    """Xception: entry block 2's second separable conv after its pointwise BN; ResNet: block 1's
    second unit's conv3 after its BN, before the sum and the ReLU. Both have negative values;
    the backbone's output (ReLU'd) has none."""
    model = deeplabv3plus(backbone, **TINY)
    net = model.backbone
    x = mdl.Tensor(np.random.default_rng(0).standard_normal((2, 3, 33, 33)).astype(np.float32))
    low_level, out = net(x)
    h = net.stem(x)
    for unit in net.units()[:net.low_level_unit]:
        h = unit(h)[0]
    unit = net.units()[net.low_level_unit]
    if backbone == "xception65":
        assert net.low_level_unit == 1  # entry_flow/block2
        sep = unit.sep2
        expected = sep.pointwise.bn(sep.pointwise.conv(sep.depthwise(F.relu(unit.sep1(h)))))
    else:
        assert net.low_level_unit == TINY["resnet_units"][0] - 2  # block1, the unit before last
        expected = unit.conv3.bn(unit.conv3.conv(unit.conv2(unit.conv1(h))))
    assert_close(low_level.numpy(), expected.numpy(), kind="float32_long")
    assert low_level.shape[2] == 9  # stride 4
    assert (low_level.numpy() < 0).mean() > 0.2
    assert (out.numpy() >= 0).all()


# Batch norm eps and TensorFlow decay per module, read from the official code:
# core/feature_extractor.py (backbones) and model.py (ASPP, decoder).
OFFICIAL_BN = {"xception65": (1e-3, 0.9997), "resnet101": (1e-5, 0.95), "head": (1e-5, 0.9997)}


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
@pytest.mark.parametrize("bn_momentum", [None, 0.05])
def test_batch_norm_per_module(backbone, bn_momentum):
    model = deeplabv3plus(backbone, **dict(TINY, bn_momentum=bn_momentum))
    seen = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            part = name.split(".")[0]
            eps, decay = OFFICIAL_BN[backbone if part == "backbone" else "head"]
            assert m.eps == eps, name
            assert m.momentum == pytest.approx(1 - decay if bn_momentum is None else bn_momentum)
            seen.add(part)
    assert seen == {"backbone", "aspp", "decoder"}


def test_aspp_concatenation_order():
    """The projection's input channels are image pooling, then the 1x1 conv, then the atrous
    convs (model.py). Only the first block of channels is the same at every pixel (a pooled
    vector upsampled), and it is the channel means (global pooling) through 1x1 conv + BN + ReLU;
    the second block is the 1x1 branch."""
    rng = np.random.default_rng(0)
    aspp = ASPP(3, 2, (1, 2, 3), separable=False, dropout=0.0, rng=rng).eval()
    randomize_batch_norm(aspp, rng)
    aspp.to(dtype=np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    branches = {}
    for block in range(5):  # project reads one block of 2 channels, through an identity 1x1
        w = np.zeros((2, 10, 1, 1))
        w[0, 2 * block, 0, 0] = w[1, 2 * block + 1, 0, 0] = 1
        aspp.project.conv.weight.data[:] = w
        aspp.project.bn.running_mean[:], aspp.project.bn.running_var[:] = 0, 1 - 1e-5
        aspp.project.bn.gamma.data[:], aspp.project.bn.beta.data[:] = 1, 100  # keep values > 0
        branches[block] = aspp(mdl.Tensor(x)).numpy() - 100
    pooling = aspp.image_pooling
    expected = relu(bn_eval(pointwise(x.mean(axis=(2, 3), keepdims=True),
                                      pooling.conv.weight.data), pooling.bn))
    assert_close(branches[0], np.broadcast_to(expected, branches[0].shape), kind="float32_long")
    one = aspp.conv1x1
    assert_close(branches[1], relu(bn_eval(pointwise(x, one.conv.weight.data), one.bn)),
                 kind="float32_long")
    for block in range(1, 5):
        assert branches[block].std(axis=(2, 3)).min() > 1e-3  # varies over the map


def test_multi_grid():
    model = deeplabv3plus("resnet101", **dict(TINY, multi_grid=(1, 2, 4)))
    assert [u.conv2.conv.dilation for u in model.backbone.units()[-3:]] == [2, 4, 8]  # OS 16
    assert model.config["multi_grid"] == [1, 2, 4]
    model.set_output_stride(8)
    assert [u.conv2.conv.dilation for u in model.backbone.units()[-3:]] == [4, 8, 16]
    xception = deeplabv3plus(**dict(TINY, multi_grid=(1, 2, 4)))
    exit2 = xception.backbone.exit_flow[1]
    assert [s.depthwise.conv.dilation for s in (exit2.sep1, exit2.sep2, exit2.sep3)] == [2, 4, 8]
    assert deeplabv3plus("resnet101", **TINY).backbone.units()[-1].conv2.conv.dilation == 2
    with pytest.raises(ValueError, match="one multi_grid factor per block-4 unit"):
        deeplabv3plus("resnet101", **dict(TINY, multi_grid=(1, 2)))
    with pytest.raises(ValueError, match="one unit rate per separable conv"):
        deeplabv3plus(**dict(TINY, multi_grid=(1, 2)))


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


@pytest.mark.parametrize("backbone", ["xception65", "resnet101"])
def test_fused_batch_norm_relu_changes_no_bit_on_cpu(monkeypatch, backbone):
    """The model's BN + ReLU pairs run as one op (F.batch_norm ``relu=True``) where
    ``nn.layers.fuses_relu``: the kernel devices. Made to on cpu, where the fused op's numbers are
    batch_norm's then relu's, the float32 training forward, every gradient and the updated BN
    statistics equal, bit for bit, those of the model with each pair as two ops (cpu's default)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 33, 33), dtype=np.float32)
    labels = rng.integers(0, 3, (2, 33, 33))
    batch_norm, relu_flags = F.batch_norm, []

    def recorded(*args, relu=False, **kwargs):
        relu_flags.append(relu)
        return batch_norm(*args, relu=relu, **kwargs)

    monkeypatch.setattr(F, "batch_norm", recorded)
    results = []
    for fused in (False, True):
        monkeypatch.setattr(nn.layers, "fuses_relu", lambda device, fused=fused: fused)
        relu_flags.clear()
        model = deeplabv3plus(backbone, **TINY).train()
        logits = model(mdl.Tensor(x))
        F.softmax_cross_entropy(logits, labels).backward()
        grads = {k: mdl.Tensor(p.grad).numpy() for k, p in model.named_parameters()}
        results.append((logits.numpy(), grads, model.state_dict()))
        assert any(relu_flags) == fused and not all(relu_flags)
    (y0, g0, s0), (y1, g1, s1) = results
    assert y0.dtype == np.float32 and np.array_equal(y0, y1)
    assert all(np.array_equal(g0[k], g1[k]) for k in g0)
    assert all(np.array_equal(s0[k], s1[k]) for k in s0)
