"""``python -m minideeplab.predict --checkpoint FILE IMAGE... --out DIR``: segment photographs
(ARCHITECTURE.md s. 8-9). Per image, ``NAME_label.png`` (class indices, VOC palette) and
``NAME_overlay.png`` (the image under its colour-coded classes, with a legend of the classes
found).

Each image is fed as the official evaluation feeds VOC (``eval_crop_size`` 513): normalised,
padded at the bottom and right with the mean pixel to ``--crop`` x ``--crop``, or, when larger,
to the next size 32k + 1 (a size every output stride divides after its "same" strided convs, as
513 is), and the prediction cropped back. Output stride, flips and scales combine as in
``evaluate`` (``experiment.predict_probs``).
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from . import threads
from .data import shapes, voc
from .data.transforms import EvalTransform
from .experiment import (ArgumentParser, CheckpointError, add_inference_flags, inference_scales,
                         load_model, number, pick_device, predict_probs)
from .tensor import Tensor
from .visualize import colorize

CLASS_NAMES = {"voc": voc.CLASSES, "shapes": shapes.CLASSES}
SWATCH, LEGEND_WIDTH = 16, 150  # legend rows (px) and column width


def padded_size(h, w, crop):
    """The side the image is padded to: ``crop``, or the next 32k + 1 above the image."""
    side = max(h, w, crop)
    return side if side == crop else -(-(side - 1) // 32) * 32 + 1


def overlay(image, label, names, alpha=0.5):
    """(H, W, 3) uint8 image blended with colorize(label), and a legend column on its right: a
    SWATCH x SWATCH colour square and the name of each class present, in class order."""
    h, w = label.shape
    present = [int(c) for c in np.unique(label)]
    blend = (image * (1 - alpha) + colorize(label) * alpha).round().astype(np.uint8)
    canvas = Image.new("RGB", (w + LEGEND_WIDTH, max(h, SWATCH * len(present))), "white")
    canvas.paste(Image.fromarray(blend), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, c in enumerate(present):
        y = row * SWATCH
        draw.rectangle([w + 2, y + 2, w + SWATCH - 2, y + SWATCH - 2],
                       fill=tuple(int(v) for v in colorize(c)))
        draw.text((w + SWATCH + 2, y + 2), names[c], fill="black")
    return canvas


def read_image(path):
    """uint8 (H, W, 3) RGB; SystemExit naming the file if it cannot be read as an image."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read image {path}: {e}") from None


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m minideeplab.predict", description=__doc__,
                       allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="checkpoint.npz (train or import_weights)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    add_inference_flags(p)
    p.add_argument("--crop", type=number(int, 1), default=513,
                   help="pad smaller images to this size (the official eval crop, 513)")
    p.add_argument("--class-names", nargs="+",
                   help="one name per class (default: those of the checkpoint's dataset)")
    args = p.parse_args(argv)
    args.scales = inference_scales(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    with threads.limit(args.threads):
        return write_predictions(args)


def write_predictions(args):
    """One label PNG and one overlay per image of ``args.images``; returns their stems."""
    device = pick_device(args.device)
    try:
        model, meta = load_model(args.checkpoint, device, args.output_stride)
    except CheckpointError as e:
        raise SystemExit(str(e)) from None
    k = meta["config"]["num_classes"]
    names = args.class_names or CLASS_NAMES.get(meta["data"]["name"], [])
    if len(names) != k:
        raise SystemExit(f"checkpoint {args.checkpoint} predicts {k} classes but "
                         f"{len(names)} class names are given (--class-names)")
    images = {path: read_image(path) for path in args.images}  # every input read before the work
    scales = args.scales
    os.makedirs(args.out, exist_ok=True)
    written = []
    for path, image in images.items():
        h, w = image.shape[:2]
        side = padded_size(h, w, args.crop)
        x, _ = EvalTransform(pad_to=side)(image, np.zeros((h, w), np.uint8))
        probs = predict_probs(model, x.transpose(2, 0, 1)[None].copy(), device, scales, args.flip)
        label = Tensor(probs.argmax(axis=1)[0, :h, :w]).numpy().astype(np.uint8)
        stem = os.path.join(args.out, os.path.splitext(os.path.basename(path))[0])
        png = Image.fromarray(label, "P")
        png.putpalette(voc.voc_palette().tobytes())
        png.save(stem + "_label.png")
        overlay(image, label, names).save(stem + "_overlay.png")
        written.append(stem)
        print(f"{path}: {h}x{w} padded to {side}, classes "
              f"{', '.join(names[c] for c in np.unique(label))}")
    return written


if __name__ == "__main__":
    main()
