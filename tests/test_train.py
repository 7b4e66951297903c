"""The training and evaluation CLIs end to end on a tiny configuration, and the official recipe
(weight decay, frozen BN, presets, evaluation's padding and multi-scale) against independent
references (ARCHITECTURE.md s. 8-9)."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from minideeplab import evaluate, functional as F, nn, train
from minideeplab.config import no_grad
from minideeplab.experiment import (build_dataset, decayed_weights, eval_loader,
                                    freeze_batch_norm, no_weight_decay, predict_probs, train_mode)
from minideeplab.experiment import evaluate as score
from minideeplab.models.deeplab import deeplabv3plus
from minideeplab.optim import SGD
from minideeplab.tensor import Tensor
from tests.test_voc import make_tree, write_label

TINY = ["--device", "cpu", "--width", "0.125", "--middle-blocks", "1", "--crop", "33",
        "--batch-size", "2", "--train-size", "8", "--val-size", "4", "--val-every", "2"]


def params(path):
    state, optim, meta = train.load_checkpoint(str(path))
    return state, optim, meta


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path):
    out = tmp_path / "run"
    metrics = train.main(TINY + ["--iters", "3", "--out", str(out)])
    for name in ("checkpoint.npz", "metrics.json", "curves.png", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    assert written["iterations"] == 3 and 0 <= written["val_miou"] <= 1
    assert written["val_miou"] == pytest.approx(metrics["val_miou"])
    for extra in ([], ["--output-stride", "8", "--multi-scale", "--scales", "0.75", "1.0",
                       "--flip"]):
        m = evaluate.main(["--checkpoint", str(out / "checkpoint.npz"), "--device", "cpu"] + extra)
        assert 0 <= m["val_miou"] <= 1
    # evaluating at the training output stride, single scale, repeats the training's final figure
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.npz")])["val_miou"] == \
        pytest.approx(metrics["val_miou"])
    # a checkpoint in the earlier code's format (no model version, the config without
    # deeplabv3plus's defaults, the dataset only in the command's arguments) is of the model
    # before the released one: refused in one line, not scored with the wrong network
    with np.load(out / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["model_version"]
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in ("resnet_units",
                                                                          "dropout")}
    meta["args"] = dict(meta.pop("data"), dataset="shapes", crop=33)
    np.savez(out / "old.npz", **dict(arrays, meta=np.array(json.dumps(meta))))
    with pytest.raises(SystemExit, match="is for model version 1, this code builds version 2 "
                                         r"\(.*\), so its parameters would compute another "
                                         "network; retrain it"):
        evaluate.main(["--checkpoint", str(out / "old.npz")])


@pytest.mark.slow
def test_resume_from_halfway_gives_the_same_parameters(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train.main(TINY + ["--iters", "4", "--out", str(straight)])
    train.main(TINY + ["--iters", "4", "--stop-after", "2", "--out", str(halves)])
    state_half, _, meta = params(halves / "checkpoint.npz")
    assert meta["iteration"] == 2
    train.main(TINY + ["--iters", "4", "--out", str(halves), "--resume",
                       str(halves / "checkpoint.npz")])
    a, oa, _ = params(straight / "checkpoint.npz")
    b, ob, _ = params(halves / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert any(not np.array_equal(a[k], state_half[k]) for k in a)  # training did move them


def test_voc_without_data_root_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--dataset", "voc", "--out", str(tmp_path)])
    assert "argument --data-root: --dataset voc needs it" in capsys.readouterr().err


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.main(["--dataset", "voc", "--data-root", str(tmp_path / "nowhere"),
                    "--out", str(tmp_path)])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        evaluate.main(["--checkpoint", str(tmp_path / "none.npz")])


# -- the recipe, against independent references ---------------------------------------------------
def tiny_model(**kw):
    return deeplabv3plus("xception65", num_classes=3, width=0.0625, middle_blocks=0,
                         aspp_channels=4, low_level_channels=2, **kw)


def test_weight_decay_only_where_the_official_code_regularises():
    # conv + BN + ReLU, a separable conv, a logits conv with bias: listed by hand
    net = nn.Sequential(nn.ConvBNReLU(3, 4, 3), nn.SeparableConv2d(4, 8), nn.Conv2d(8, 2, 1,
                                                                                     bias=True))
    decayed = {"0.conv.weight", "1.pointwise.conv.weight", "2.weight"}
    names = dict(net.named_parameters())
    assert {n for n, p in names.items() if id(p) in map(id, decayed_weights(net))} == decayed
    assert set(names) - decayed == {
        "0.bn.gamma", "0.bn.beta", "1.depthwise.conv.weight", "1.depthwise.bn.gamma",
        "1.depthwise.bn.beta", "1.pointwise.bn.gamma", "1.pointwise.bn.beta", "2.bias"}
    # SGD with a zero gradient and no momentum: a decayed weight shrinks by lr * wd, nothing else
    # moves
    before = {n: p.data.copy() for n, p in names.items()}
    for p in names.values():
        p.grad = np.zeros_like(p.data)
    SGD(list(names.values()), lr=1.0, momentum=0.0, weight_decay=0.25,
        no_decay=no_weight_decay(net)).step()
    for n, p in names.items():
        np.testing.assert_array_equal(p.data, before[n] * (0.75 if n in decayed else 1), n)
    # the whole network, by the official scope names: every weight but the depthwise ones
    model = tiny_model()
    names = dict(model.named_parameters())
    expected = {n for n in names if n.endswith(".weight") and ".depthwise." not in n}
    assert {n for n, p in names.items() if not no_weight_decay(model)(p)} == expected
    assert "logits.weight" in expected and "aspp.atrous.0.pointwise.conv.weight" in expected


def test_weight_decay_default_is_the_backbones_official_value():
    assert train.parse_args([]).weight_decay == 4e-5
    assert train.parse_args(["--backbone", "resnet101"]).weight_decay == 1e-4
    assert train.parse_args(["--backbone", "resnet101", "--weight-decay", "0"]).weight_decay == 0


def test_paper_voc_preset():
    args = train.parse_args(["--preset", "paper-voc", "--data-root", "VOC2012"])
    assert (args.dataset, args.backbone, args.width, args.middle_blocks, args.aspp_channels,
            args.low_level_channels, args.separable_aspp, args.bn_momentum, args.output_stride,
            args.crop, args.batch_size, args.iters, args.lr, args.weight_decay,
            list(args.scale_range), args.scale_step) == (
        "voc", "xception65", 1.0, 16, 256, 48, True, None, 16, 513, 16, 30000, 0.007, 4e-5,
        [0.5, 2.0], 0.25)
    assert train.parse_args(["--preset", "paper-voc", "--data-root", "VOC2012", "--crop",
                             "321"]).crop == 321  # a flag still overrides its preset
    shapes = train.parse_args([])
    assert (shapes.dataset, shapes.crop, shapes.scale_range) == ("shapes", 65, None)


def test_frozen_batch_norm_stays_bit_identical_over_a_step():
    model = tiny_model(bn_momentum=0.5)
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    rng = np.random.default_rng(0)
    for m in bn:  # statistics and parameters that a step would visibly move
        m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
        m.running_var[...] = rng.uniform(0.5, 1.5, m.running_var.shape)
        m.gamma.data[...] = rng.uniform(0.9, 1.1, m.gamma.shape)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    trained = freeze_batch_norm(model)
    assert {id(p) for p in trained} == {id(p) for p in model.parameters()} - {
        id(p) for m in bn for p in (m.gamma, m.beta)}
    train_mode(model, freeze_bn=True)
    assert model.aspp.dropout.training and not any(m.training for m in bn)
    opt = SGD(trained, lr=0.1, momentum=0.9, weight_decay=1e-3, no_decay=no_weight_decay(model))
    x = Tensor(rng.standard_normal((2, 3, 33, 33)).astype(np.float32))
    loss = F.softmax_cross_entropy(model(x), Tensor(rng.integers(0, 3, (2, 33, 33))))
    loss.backward()
    opt.step()
    after = model.state_dict()
    bn_names = {k for k in after if k.rsplit(".", 1)[1] in ("running_mean", "running_var",
                                                            "gamma", "beta")}
    assert len(bn_names) == 4 * len(bn)
    for k in bn_names:
        np.testing.assert_array_equal(after[k], before[k], k)
    assert all(not np.array_equal(after[k], before[k]) for k in after if k not in bn_names)


def test_second_stage_from_a_checkpoint_with_frozen_batch_norm(tmp_path):
    """The paper's two stages in miniature: output stride 16, then --init-from it at output
    stride 8 with --freeze-bn: every BN array of the result is the first stage's, bit for bit."""
    first, second = tmp_path / "first", tmp_path / "second"
    # small steps and fast BN statistics: the statistics fit the weights they end with, as at the
    # end of a long run
    stage = ["--iters", "2", "--lr", "0.001"]
    train.main(TINY + stage + ["--out", str(first), "--output-stride", "16", "--bn-momentum",
                               "0.9"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow: the frozen statistics fit
        train.main(TINY + stage + ["--out", str(second), "--init-from",
                                   str(first / "checkpoint.npz"), "--freeze-bn"])
    a, _, _ = params(first / "checkpoint.npz")
    b, _, meta = params(second / "checkpoint.npz")
    assert meta["config"]["output_stride"] == 8 and meta["args"]["freeze_bn"]
    moved = [k for k in a if not np.array_equal(a[k], b[k])]
    assert moved and all(k.rsplit(".", 1)[1] == "weight" or k == "logits.bias" for k in moved)
    with pytest.raises(SystemExit, match=r"--init-from: load_state_dict: .* has shape"):
        train.main(TINY + ["--iters", "2", "--out", str(tmp_path / "x"), "--width", "0.25",
                           "--init-from", str(first / "checkpoint.npz")])


def test_init_from_and_resume_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--init-from", "a.npz", "--resume", "b.npz"])
    assert "argument --init-from: not with --resume" in capsys.readouterr().err


def test_voc_val_image_is_padded_to_513_with_the_mean_pixel(tmp_path):
    """A 500 x 375 val image: the loader pads it to 513 x 513 with 0 (the mean pixel, normalised)
    and 255, and evaluate's confusion matrix is that of the image padded here by hand."""
    root = tmp_path / "VOC2012"
    make_tree(root, n=2)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    label = rng.integers(0, 21, (375, 500))
    label[:20] = 255
    Image.fromarray(image).save(root / "JPEGImages" / "2007_000001.jpg", quality=100)
    write_label(root / "SegmentationClass" / "2007_000001.png", label)
    val = build_dataset("voc", "val", data_root=str(root))
    image = val[0][0]  # as decoded (JPEG)
    (images, labels), = list(eval_loader(val, 8))
    assert images.shape == (1, 3, 513, 513) and labels.shape == (1, 513, 513)
    assert (images[0, :, 375:] == 0).all() and (images[0, :, :, 500:] == 0).all()
    assert (labels[0, 375:] == 255).all() and (labels[0, :, 500:] == 255).all()
    model = deeplabv3plus("xception65", num_classes=21, width=0.0625, middle_blocks=0,
                          aspp_channels=4, low_level_channels=2).eval()
    padded = np.zeros((1, 3, 513, 513), np.float32)
    padded[0, :, :375, :500] = image.transpose(2, 0, 1) / np.float32(127.5) - 1
    with no_grad():
        pred = model(Tensor(padded)).numpy()[0].argmax(0)[:375, :500]
    keep = label != 255
    expected = np.bincount(label[keep] * 21 + pred[keep], minlength=21 * 21).reshape(21, 21)
    np.testing.assert_array_equal(score(model, eval_loader(val, 8), 21, "cpu").matrix,
                                  expected)


def resize_ac(a, size):
    """(N, C, H, W) resized with align_corners bilinear interpolation, by scipy in float64."""
    h, w = a.shape[2:]
    yy, xx = np.meshgrid(np.arange(size[0]) * ((h - 1) / (size[0] - 1)),
                         np.arange(size[1]) * ((w - 1) / (size[1] - 1)), indexing="ij")
    return np.array([[ndimage.map_coordinates(c.astype(np.float64), [yy, xx], order=1)
                      for c in img] for img in a])


def test_multi_scale_combines_as_the_official_eval():
    """model.py predict_labels_multi_scale: per scale (and mirror) the logits of the scaled input
    at the decoder's stride, resized to scale_dimension(H, max(1, s) / 4), then to H x W; softmax;
    mean. The reference takes the logits before the model's own upsampling."""
    model = tiny_model(output_stride=16).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 33, 33)).astype(np.float32)
    scales = (0.5, 0.75, 1.0, 1.25)

    def logits_at_stride_4(inp):
        with no_grad():
            low, features = model.backbone(Tensor(inp.astype(np.float32)))
            return model.logits(model.decoder(model.aspp(features), low)).numpy()

    probs = []
    for s in scales:
        n = int(32 * s + 1)
        xs = x if n == 33 else resize_ac(x, (n, n))
        for flip in (False, True):
            logits = logits_at_stride_4(xs[..., ::-1] if flip else xs)
            logits = logits[..., ::-1] if flip else logits
            m = int(32 * max(1, s) / 4 + 1)
            logits = resize_ac(resize_ac(logits, (m, m)), (33, 33))
            e = np.exp(logits - logits.max(1, keepdims=True))
            probs.append(e / e.sum(1, keepdims=True))
    np.testing.assert_allclose(predict_probs(model, x, "cpu", scales, flip=True),
                               np.mean(probs, axis=0), atol=2e-5)
    # one scale, no flip: the softmax of the model's own output, bit for bit
    with no_grad():
        logits = model(Tensor(x)).numpy()
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_array_equal(predict_probs(model, x, "cpu"), e / e.sum(1, keepdims=True))
