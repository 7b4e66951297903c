"""nn: Module bookkeeping (parameters, buffers, modes, devices, state dicts) and the layers."""
import numpy as np
import pytest

import minideeplab as mdl
import minideeplab.functional as F
from minideeplab import nn
from minideeplab.optim import SGD
from tests.conftest import assert_close


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.ConvBNReLU(3, 4, 3, rng=rng), nn.SeparableConv2d(4, 6, rng=rng),
                         nn.Conv2d(6, 2, 1, bias=True, rng=rng))


def test_registration_names_and_buffers():
    net = small_net()
    names = [k for k, _ in net.named_parameters()]
    assert names == ["0.conv.weight", "0.bn.gamma", "0.bn.beta",
                     "1.depthwise.conv.weight", "1.depthwise.bn.gamma", "1.depthwise.bn.beta",
                     "1.pointwise.conv.weight", "1.pointwise.bn.gamma", "1.pointwise.bn.beta",
                     "2.weight", "2.bias"]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    state = net.state_dict()
    assert set(state) == set(names) | {f"{m}.bn.running_{s}" for m in
                                       ("0", "1.depthwise", "1.pointwise") for s in ("mean", "var")}
    assert state["1.depthwise.conv.weight"].shape == (4, 1, 3, 3)  # depthwise: groups = cin
    assert np.all(state["0.bn.running_var"] == 1) and np.all(state["0.bn.gamma"] == 1)


def test_he_normal_is_seeded_and_scaled():
    a, b = small_net(1).state_dict(), small_net(1).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    w = nn.he_normal((256, 128, 3, 3), np.random.default_rng(0))
    assert w.dtype == np.float32 and w.std() == pytest.approx(np.sqrt(2 / (128 * 9)), rel=0.01)


def test_train_eval_flags_reach_every_module():
    net = small_net().eval()
    assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.train().modules())


def test_to_moves_in_place_and_keeps_parameter_objects():
    net = small_net()
    params = net.parameters()
    opt = SGD(params, lr=0.1)
    net.to("emu", dtype=np.float64)
    assert [id(p) for p in net.parameters()] == [id(p) for p in opt.params]
    assert all(p.device == "emu" and p.dtype == np.float64 for p in params)
    assert net[0].bn.running_mean.dtype == np.float64
    net.to("cpu", dtype=np.float32)
    assert all(p.device == "cpu" and p.dtype == np.float32 for p in params)


def test_state_dict_round_trip_is_a_copy():
    a, b = small_net(0), small_net(1)
    state = a.state_dict()
    b.load_state_dict(state)
    state["2.bias"][:] = 7  # the dict holds copies, not views of the model
    assert all(np.array_equal(v, a.state_dict()[k]) for k, v in b.state_dict().items())


def test_load_state_dict_errors_name_the_key_and_change_nothing():
    net = small_net()
    before = net.state_dict()
    bad = dict(before, **{"1.pointwise.conv.weight": np.zeros((6, 5, 1, 1))})
    shapes = r"1\.pointwise\.conv\.weight.*\(6, 4, 1, 1\).*\(6, 5, 1, 1\)"
    with pytest.raises(ValueError, match=shapes):
        net.load_state_dict(dict(bad, **{"0.bn.gamma": np.full(4, 3.0)}))
    assert np.all(net.state_dict()["0.bn.gamma"] == 1)  # checked before anything was copied
    missing = {k: v for k, v in before.items() if k != "0.bn.running_mean"}
    with pytest.raises(ValueError, match="missing keys.*0.bn.running_mean"):
        net.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        net.load_state_dict(dict(before, extra=np.zeros(1)))


@pytest.mark.parametrize("stride, dilation, size", [(1, 1, 9), (1, 3, 9), (2, 1, 9), (2, 2, 8)])
def test_same_padding_sizes(stride, dilation, size):
    conv = nn.Conv2d(2, 3, 3, stride, "same", dilation, rng=np.random.default_rng(0))
    x = mdl.Tensor(np.random.default_rng(1).standard_normal((1, 2, size, size)).astype(np.float32))
    y = conv(x)
    assert y.shape == (1, 3, (size - 1) // stride + 1, (size - 1) // stride + 1)  # 513 -> 257
    ref = F.conv2d(x, conv.weight, None, stride, dilation, dilation)
    assert_close(y.data, ref.data)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="groups=3 must divide cin=4"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="odd kernel"):
        nn.Conv2d(4, 6, 2, padding="same")


def naive_max_pool(x, k, s, p):
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), -np.inf)
    xp[:, :, p:p + h, p:p + w] = x
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return np.array([[[[xp[a, b, i * s:i * s + k, j * s:j * s + k].max() for j in range(wo)]
                       for i in range(ho)] for b in range(c)] for a in range(n)])


@pytest.mark.parametrize("size", [7, 8, 1])
def test_max_pool_forward_and_gradient(device, size):
    x = np.random.default_rng(size).standard_normal((2, 3, size, size))
    y = nn.MaxPool2d(3, 2)(mdl.Tensor(x, device=device))
    assert_close(y.numpy(), naive_max_pool(x, 3, 2, 1))
    mdl.gradcheck.check_backward(lambda t: nn.max_pool2d(t, 3, 2, 1), [x], device=device)
