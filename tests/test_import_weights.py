"""Importing official DeepLab variables: the names against the official variable lists
(tests/fixtures/official_variables.json, as TensorFlow builds the official graph:
tests/fixtures/make_official_variables.py), the layouts against a NumPy reference that reads the
official-layout arrays directly, the errors, the command line, and (opt-in) the logits of the
official model with random weights."""
import json
import os

import numpy as np
import pytest

from minideeplab import import_weights, nn
from minideeplab.data.transforms import normalize
from minideeplab.config import no_grad
from minideeplab.experiment import build_model, load_checkpoint
from minideeplab.import_weights import import_official, official_name
from minideeplab.models.deeplab import deeplabv3plus
from minideeplab.tensor import Tensor
from tests.conftest import TOL

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
with open(os.path.join(FIXTURES, "official_variables.json")) as f:
    OFFICIAL = json.load(f)


@pytest.mark.parametrize("backbone", sorted(OFFICIAL))
@pytest.mark.parametrize("decoder", [True, False])
def test_official_variable_lists_fit_one_to_one(backbone, decoder):
    """Every variable of the official list is used with its shape, every parameter and BN
    statistic filled (import_official raises otherwise); DeepLabv3 is the list without decoder/."""
    listed = {n: s for n, s in OFFICIAL[backbone].items()
              if decoder or not n.startswith("decoder/")}
    variables = {n: np.full(s, i, np.float32) for i, (n, s) in enumerate(listed.items())}
    model = import_official(variables)
    assert model.config["backbone"] == backbone and model.config["decoder"] == decoder
    assert model.config["num_classes"] == 21
    state = model.state_dict()
    names = {official_name(k, model.config)[0] for k in state}
    assert names == set(listed) and len(names) == len(state)
    # each of our arrays holds the value of the variable it came from
    index = {n: i for i, n in enumerate(listed)}
    for key, value in state.items():
        assert (value == index[official_name(key, model.config)[0]]).all(), key


TINY = {"xception65": dict(width=0.25, middle_blocks=1),
        "resnet101": dict(width=0.125, resnet_units=(2, 1, 1, 3))}


def fake_official(backbone, decoder=True, num_classes=5, seed=1):
    """Random official-layout variables for a tiny model (random BN statistics too): our model's
    shapes, each kernel written as TensorFlow holds it, under its official name."""
    model = deeplabv3plus(backbone, num_classes=num_classes, decoder=decoder, aspp_channels=8,
                          low_level_channels=4, **TINY[backbone])
    rng = np.random.default_rng(seed)
    variables = {"global_step": np.array(7, np.int64)}
    for key, value in model.state_dict().items():
        name, kind = official_name(key, model.config)
        shape = {"dense": lambda s: (s[2], s[3], s[1], s[0]),
                 "depthwise": lambda s: (s[2], s[3], s[0], 1)}.get(kind, lambda s: s)(value.shape)
        a = rng.standard_normal(shape).astype(np.float32)
        variables[name] = np.abs(a) + 0.5 if name.endswith("moving_variance") else a
    return variables


def reference_conv_bn(x, variables, scope, module):
    """NHWC NumPy reference of one official layer straight from the official arrays: TF-slim
    conv (kernel [kh, kw, in, out] or depthwise [kh, kw, in, 1]), "same" padding, then BN
    (eps of ours) or the bias, then ReLU where the module has one."""
    conv = module.conv if isinstance(module, nn.ConvBNReLU) else module
    depthwise = conv.groups > 1
    w = variables[f"{scope}/{'depthwise_weights' if depthwise else 'weights'}"]
    k, s, d = w.shape[0], conv.stride, conv.dilation
    p = d * (k - 1) // 2
    xp = np.pad(x, ((p, p), (p, p), (0, 0)))
    ho, wo = (xp.shape[0] - d * (k - 1) - 1) // s + 1, (xp.shape[1] - d * (k - 1) - 1) // s + 1
    y = 0
    for i in range(k):
        for j in range(k):
            tap = xp[i * d:i * d + s * (ho - 1) + 1:s, j * d:j * d + s * (wo - 1) + 1:s]
            y = y + (tap * w[i, j, :, 0] if depthwise else tap @ w[i, j])
    if not isinstance(module, nn.ConvBNReLU):
        return y + variables[f"{scope}/biases"]
    bn = {n: variables[f"{scope}/BatchNorm/{n}"] for n in
          ("gamma", "beta", "moving_mean", "moving_variance")}
    y = (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + module.bn.eps) * bn["gamma"] \
        + bn["beta"]
    return np.maximum(y, 0) if module.relu else y


@pytest.mark.parametrize("backbone", sorted(TINY))
def test_every_layer_computes_what_the_official_arrays_say(backbone):
    variables = fake_official(backbone)
    model = import_official(variables).eval()
    rng = np.random.default_rng(0)
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, nn.ConvBNReLU) or n == "logits."]
    seen = set()
    for name, module in layers:
        key = name + ("weight" if name == "logits." else "conv.weight")
        scope = official_name(key, model.config)[0].rsplit("/", 1)[0]
        seen.add(scope)
        cin = (module.conv if name != "logits." else module).weight.shape[1]
        cin *= (module.conv.groups if name != "logits." else 1)
        x = rng.standard_normal((7, 6, cin)).astype(np.float32)
        with no_grad():
            got = module(Tensor(x.transpose(2, 0, 1)[None].copy())).numpy()[0].transpose(1, 2, 0)
        np.testing.assert_allclose(got, reference_conv_bn(x, variables, scope, module),
                                   **TOL["float32_long"], err_msg=name)
    # every official layer was checked
    assert seen == {n.split("/BatchNorm/")[0] if "/BatchNorm/" in n else n.rsplit("/", 1)[0]
                    for n in variables if n != "global_step"}


def test_whole_model_matches_the_model_the_variables_came_from():
    """Export a model's state in the official layout, import it: the same logits, bit for bit."""
    source = deeplabv3plus("xception65", num_classes=3, aspp_channels=8, low_level_channels=4,
                           seed=3, **TINY["xception65"]).eval()
    rng = np.random.default_rng(2)
    for _, m, b in source.named_buffers():
        setattr(m, b, (rng.random(getattr(m, b).shape) + 0.5).astype(np.float32))
    variables = {}
    for key, value in source.state_dict().items():
        name, kind = official_name(key, source.config)
        variables[name] = {"dense": lambda a: a.transpose(2, 3, 1, 0),
                           "depthwise": lambda a: a.transpose(2, 3, 0, 1)}.get(
            kind, lambda a: a)(value)
    imported = import_official(variables).eval()
    x = Tensor(rng.standard_normal((1, 3, 33, 33)).astype(np.float32))
    with no_grad():
        np.testing.assert_array_equal(imported(x).numpy(), source(x).numpy())


def test_missing_left_over_and_misshapen_variables_are_listed():
    variables = fake_official("xception65")
    del variables["aspp0/BatchNorm/gamma"]
    variables["decoder/extra/weights"] = np.zeros(3, np.float32)
    variables["logits/semantic/biases"] = np.zeros(4, np.float32)
    variables["aspp0/weights/Momentum"] = np.zeros(3, np.float32)  # optimizer slot: ignored
    with pytest.raises(ValueError) as e:
        import_official(variables)
    msg = str(e.value)
    assert "1 missing: aspp0/BatchNorm/gamma (for aspp.conv1x1.bn.gamma)" in msg
    assert "1 left over: decoder/extra/weights" in msg
    assert "1 of the wrong shape: logits/semantic/biases (4,)" in msg
    assert "Momentum" not in msg
    with pytest.raises(ValueError, match="not an official DeepLab checkpoint"):
        import_official({"vgg_16/conv1/weights": np.zeros((3, 3, 3, 8), np.float32)})


def test_command_line_writes_a_checkpoint_evaluate_loads(tmp_path, monkeypatch, capsys):
    variables = fake_official("xception65", decoder=False, num_classes=4)
    monkeypatch.setattr(import_weights, "read_checkpoint", lambda prefix: variables)
    out = str(tmp_path / "imported.npz")
    import_weights.main(["model.ckpt", "--out", out, "--output-stride", "8"])
    state, _, meta = load_checkpoint(out)
    assert meta["config"]["num_classes"] == 4 and meta["config"]["output_stride"] == 8
    assert not meta["config"]["decoder"] and meta["config"]["middle_blocks"] == 1
    np.testing.assert_array_equal(state["logits.weight"][:, :, 0, 0],
                                  variables["logits/semantic/weights"][0, 0].T)
    with pytest.raises(SystemExit, match="--backbone resnet101 but it holds xception65"):
        import_weights.main(["model.ckpt", "--out", out, "--backbone", "resnet101"])
    monkeypatch.setattr(import_weights, "read_checkpoint", lambda prefix: {})
    with pytest.raises(SystemExit, match="cannot import model.ckpt: not an official"):
        import_weights.main(["model.ckpt", "--out", out])


COMPARE = os.environ.get("MINIDEEPLAB_OFFICIAL_COMPARE")


@pytest.mark.skipif(not COMPARE, reason="set MINIDEEPLAB_OFFICIAL_COMPARE to the folder that "
                    "make_official_variables.py --compare wrote")
def test_logits_equal_the_official_models(tmp_path):
    """The official xception_65 DeepLabv3+ (OS 16, decoder; random weights and BN statistics),
    saved by TensorFlow, imported: the same logits at float32 round-off."""
    out = str(tmp_path / "imported.npz")
    import_weights.main([os.path.join(COMPARE, "model.ckpt"), "--backbone", "xception65",
                         "--out", out])
    state, _, meta = load_checkpoint(out)
    model = build_model(meta["config"], "cpu")
    model.load_state_dict(state)
    image = np.load(os.path.join(COMPARE, "image.npy"))
    expected = np.load(os.path.join(COMPARE, "logits.npy"))
    with no_grad():
        got = model.eval()(Tensor(normalize(image).transpose(2, 0, 1)[None].copy())).numpy()
    err = np.abs(got[0].transpose(1, 2, 0) - expected).max() / np.abs(expected).max()
    print(f"largest logits difference / largest logit: {err:.2e}")
    assert err < 1e-5
