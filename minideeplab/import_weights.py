"""``python -m minideeplab.import_weights CHECKPOINT_PREFIX --out FILE``: an official DeepLab
checkpoint (the TensorFlow model zoo's ``model.ckpt``) as our checkpoint, for ``evaluate`` and
``predict`` (ARCHITECTURE.md s. 7).

Official names, read from research/deeplab of tensorflow/models: core/xception.py
(``xception_65/{entry,middle,exit}_flow/blockB/unit_U/xception_module/separable_convK_{depthwise,
pointwise}``, ``shortcut``, the stem ``entry_flow/conv1_{1,2}``), core/resnet_v1_beta.py
(``resnet_v1_101/conv1_{1,2,3}``, ``blockB/unit_U/bottleneck_v1/{conv1,conv2,conv3,shortcut}``),
model.py (``image_pooling``, ``aspp0``, ``aspp1-3`` or ``aspp1-3_{depthwise,pointwise}``,
``concat_projection``, ``decoder/feature_projection0``, ``decoder/decoder_conv{0,1}_...``,
``logits/semantic`` with ``biases``). Every conv is TF-slim's: ``weights`` [kh, kw, in, out] (a
depthwise one ``depthwise_weights`` [kh, kw, in, 1]) and ``BatchNorm/{gamma, beta, moving_mean,
moving_variance}``. The model's configuration is read from the names and shapes.
"""
import argparse
import re
import time

import numpy as np

from .experiment import ArgumentParser, build_model, save_checkpoint
from .models.deeplab import model_config
from .optim import SGD
from .tf_checkpoint import read_checkpoint

BACKBONE_SCOPES = {"xception65": "xception_65", "resnet101": "resnet_v1_101"}
# Training bookkeeping a checkpoint may hold beside the model: dropped, not an error.
NOT_MODEL = re.compile(r"^global_step$|/(Momentum|ExponentialMovingAverage)$")
BN = {"gamma": "gamma", "beta": "beta", "running_mean": "moving_mean",
      "running_var": "moving_variance"}


def _backbone_scope(name, config):
    """Our backbone module name (after ``backbone.``) -> (the official variable scope, what is
    left of our name: ["conv"] or ["bn"])."""
    parts = name.split(".")
    if config["backbone"] == "xception65":
        if parts[0] == "stem":
            return f"xception_65/entry_flow/conv1_{int(parts[1]) + 1}", parts[2:]
        flow, i = parts[0], int(parts[1])
        block, unit = (1, i + 1) if flow == "middle_flow" else (i + 1, 1)
        rest = parts[2:]
        # sepK.{depthwise,pointwise}.{conv,bn} or shortcut.{conv,bn}
        layer, rest = ((rest[0], rest[1:]) if rest[0] == "shortcut" else
                       (f"separable_conv{rest[0][3:]}_{rest[1]}", rest[2:]))
        return f"xception_65/{flow}/block{block}/unit_{unit}/xception_module/{layer}", rest
    if parts[0] == "stem":
        return f"resnet_v1_101/conv1_{int(parts[1]) + 1}", parts[2:]
    i, units = int(parts[1]), config["resnet_units"]
    block = next(b for b in range(4) if i < sum(units[:b + 1]))
    unit = i - sum(units[:block]) + 1
    return f"resnet_v1_101/block{block + 1}/unit_{unit}/bottleneck_v1/{parts[2]}", parts[3:]


def _head_scope(name):
    """Our ASPP/decoder/logits module name -> (the official scope, model.py; what is left of our
    name)."""
    fixed = {"aspp.image_pooling": "image_pooling", "aspp.conv1x1": "aspp0",
             "aspp.project": "concat_projection", "logits": "logits/semantic",
             "decoder.low_level": "decoder/feature_projection0"}
    for ours, theirs in fixed.items():
        if name == ours or name.startswith(ours + "."):
            return theirs, name[len(ours):].split(".")[1:]
    m = re.match(r"(aspp\.atrous|decoder\.refine)\.(\d+)\.?(.*)", name)
    if not m:
        raise ValueError(f"no official name for {name}")
    stem = (f"aspp{int(m[2]) + 1}" if m[1] == "aspp.atrous" else f"decoder/decoder_conv{m[2]}")
    rest = m[3].split(".")
    if rest[0] in ("depthwise", "pointwise"):
        return f"{stem}_{rest[0]}", rest[1:]
    return stem, rest


def official_name(key, config):
    """Our state_dict ``key`` -> (official variable name, "dense" | "depthwise" | "vector")."""
    module, attr = key.rsplit(".", 1)
    if module.startswith("backbone."):
        scope, rest = _backbone_scope(module[len("backbone."):], config)
    else:
        scope, rest = _head_scope(module)
    depthwise = "depthwise" in scope.rsplit("/", 1)[-1]
    if rest == ["conv"] or (not rest and attr in ("weight", "bias")):
        if attr == "bias":
            return f"{scope}/biases", "vector"
        return f"{scope}/{'depthwise_weights' if depthwise else 'weights'}", (
            "depthwise" if depthwise else "dense")
    if rest == ["bn"]:
        return f"{scope}/BatchNorm/{BN[attr]}", "vector"
    raise ValueError(f"no official name for {key}")


def to_ours(array, kind):
    """An official array in our layout: conv [kh, kw, in, out] -> (out, in, kh, kw); depthwise
    [kh, kw, in, 1] -> (in, 1, kh, kw)."""
    if kind == "dense":
        return array.transpose(3, 2, 0, 1)
    if kind == "depthwise":
        return array.transpose(2, 3, 0, 1)
    return array


def infer_config(variables, **overrides):
    """``deeplabv3plus``'s arguments that the official ``variables`` ({name: array}) imply:
    backbone, depth (Xception middle blocks, ResNet units per block), width, classes (the
    logits' shape), separable or dense ASPP, decoder or not, the ASPP and low-level widths.
    ``overrides``: the rest (output_stride, multi_grid). ValueError if no backbone is found."""
    names = set(variables)
    backbone = next((ours for ours, scope in BACKBONE_SCOPES.items()
                     if any(n.startswith(scope + "/") for n in names)), None)
    if backbone is None or "logits/semantic/weights" not in names:
        raise ValueError("not an official DeepLab checkpoint of xception_65 or resnet_v1_101: no "
                         "variable under xception_65/ or resnet_v1_101/, or no logits/semantic")
    scope = BACKBONE_SCOPES[backbone]
    config = dict(backbone=backbone,
                  num_classes=variables["logits/semantic/weights"].shape[-1],
                  decoder="decoder/feature_projection0/weights" in names,
                  separable_aspp="aspp1_depthwise/depthwise_weights" in names,
                  aspp_channels=variables["aspp0/weights"].shape[-1])
    if config["decoder"]:
        config["low_level_channels"] = variables["decoder/feature_projection0/weights"].shape[-1]
    if backbone == "xception65":
        config["width"] = variables[f"{scope}/entry_flow/conv1_1/weights"].shape[-1] / 32
        config["middle_blocks"] = len({m[1] for n in names if (
            m := re.match(scope + r"/middle_flow/block1/unit_(\d+)/", n))})
    else:
        config["width"] = variables[f"{scope}/conv1_1/weights"].shape[-1] / 64
        config["resnet_units"] = [len({m[1] for n in names if (
            m := re.match(rf"{scope}/block{b}/unit_(\d+)/", n))}) for b in range(1, 5)]
    return model_config(**config, **overrides)


def import_official(variables, **overrides):
    """The model (on the CPU) holding the official ``variables`` ({name: array}): every
    parameter and BN statistic filled, every variable used (but training bookkeeping:
    global_step, optimizer slots). ValueError listing what is missing, left over or of the wrong
    shape."""
    model = build_model(infer_config(variables, **overrides), "cpu")
    ours = model.state_dict()
    state, missing, wrong = {}, [], []
    used = set()
    for key, have in ours.items():
        name, kind = official_name(key, model.config)
        if name not in variables:
            missing.append(f"{name} (for {key})")
            continue
        used.add(name)
        got = to_ours(np.asarray(variables[name], np.float32), kind)
        if got.shape != have.shape:
            wrong.append(f"{name} {tuple(variables[name].shape)} (for {key} {have.shape})")
        state[key] = np.ascontiguousarray(got)
    left = sorted(n for n in set(variables) - used if not NOT_MODEL.search(n))
    problems = [f"{len(v)} {what}: {', '.join(v)}" for v, what in
                ((missing, "missing"), (left, "left over"), (wrong, "of the wrong shape")) if v]
    if problems:
        raise ValueError(f"official {model.config['backbone']} variables do not fit the model: "
                         + "; ".join(problems))
    model.load_state_dict(state)
    return model


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m minideeplab.import_weights", description=__doc__,
                       allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the official checkpoint prefix (.../model.ckpt)")
    p.add_argument("--backbone", choices=list(BACKBONE_SCOPES),
                   help="check that the checkpoint has this backbone (default: read from it)")
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32], default=16,
                   help="the model's default output stride (evaluate can change it)")
    p.add_argument("--multi-grid", type=int, nargs="+",
                   help="unit rates of the last block (the official flag; default 1 1 1)")
    p.add_argument("--out", required=True, help="our checkpoint (.npz) to write")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    overrides = dict(output_stride=args.output_stride)
    if args.multi_grid:
        overrides["multi_grid"] = args.multi_grid
    try:
        model = import_official(read_checkpoint(args.checkpoint), **overrides)
    except ValueError as e:
        raise SystemExit(f"cannot import {args.checkpoint}: {e}") from None
    if args.backbone and args.backbone != model.config["backbone"]:
        raise SystemExit(f"cannot import {args.checkpoint}: --backbone {args.backbone} but it "
                         f"holds {model.config['backbone']}")
    # No training data: evaluate and predict take the dataset from their flags (VOC by default).
    data = dict(name="voc", data_root=None, image_size=None, train_size=None, val_size=None,
                seed=0, train_split=None)
    meta = dict(iteration=0, config=model.config, data=data, seed=0, history={},
                seconds=time.perf_counter() - t0, imported_from=args.checkpoint)
    save_checkpoint(args.out, model, SGD(model.parameters(), lr=0.0), meta)
    print(f"{args.out}: {model.config['backbone']}, {model.config['num_classes']} classes, "
          f"decoder {model.config['decoder']}, output stride {model.config['output_stride']}")
    return model


if __name__ == "__main__":
    main()
