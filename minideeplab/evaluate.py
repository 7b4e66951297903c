"""``python -m minideeplab.evaluate``: mIoU of a checkpoint (paper Sec. 4; ARCHITECTURE.md s. 8).

One confusion matrix over the whole split; the output stride can differ from training's (Sec.
3.1: atrous rates change, weights do not); multi-scale inputs and left-right flips average the
class probabilities, as in the paper's Table 3 ("MS", "Flip").
"""
import argparse
import json
import os
import time

import numpy as np
from tqdm import tqdm

from . import functional as F
from .config import no_grad
from .metrics import ConfusionMatrix
from .tensor import Tensor

PAPER_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def predict_probs(model, images, device, scales=(1.0,), flip=False):
    """Class probabilities (N, K, H, W) averaged over ``scales`` and, with ``flip``, mirrors.
    A scale s resizes H to round((H - 1) s) + 1, which keeps 2^k + 1 sizes aligned."""
    n, _, h, w = images.shape
    x = Tensor(images, device=device)
    total = 0
    with no_grad():
        for s in scales:
            size = (int(round((h - 1) * s)) + 1, int(round((w - 1) * s)) + 1)
            xs = x if size == (h, w) else F.resize_bilinear(x, size)
            for mirrored in ((False, True) if flip else (False,)):
                inp = Tensor(xs.data[..., ::-1].copy(), device=device) if mirrored else xs
                logits = model(inp).data
                e = x.device.xp.exp(logits - logits.max(axis=1, keepdims=True))
                probs = e / e.sum(axis=1, keepdims=True)
                if mirrored:
                    probs = probs[..., ::-1].copy()
                if probs.shape[-2:] != (h, w):
                    probs = F.resize_bilinear(Tensor(probs, device=device), (h, w)).data
                total = total + probs
    return total / (len(scales) * (2 if flip else 1))


def evaluate(model, loader, num_classes, device, scales=(1.0,), flip=False, progress=False):
    """The ConfusionMatrix of ``model`` (switched to eval mode) over every batch of ``loader``."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for images, labels in tqdm(loader, desc="evaluate", disable=not progress):
        probs = predict_probs(model, images, device, scales, flip)
        cm.update(Tensor(probs.argmax(axis=1)).numpy(), labels)
    return cm


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m minideeplab.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.npz written by train")
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                   help="evaluation output stride (default: the training one)")
    p.add_argument("--multi-scale", action="store_true",
                   help=f"average over scales (default {PAPER_SCALES})")
    p.add_argument("--scales", type=float, nargs="+", default=list(PAPER_SCALES))
    p.add_argument("--flip", action="store_true", help="also average left-right mirrored inputs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "emu"])
    p.add_argument("--dataset", choices=["shapes", "voc"], help="default: the training one")
    p.add_argument("--data-root")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", help="folder for metrics.json (default: eval_os<OS>[_ms][_flip] "
                                 "beside the checkpoint)")
    return p.parse_args(argv)


def main(argv=None):
    from .train import build_model, datasets, load_checkpoint, pick_device
    from .data.transforms import Loader, EvalTransform
    args = parse_args(argv)
    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"no checkpoint at {args.checkpoint}")
    state, _, meta = load_checkpoint(args.checkpoint)
    device = pick_device(args.device)
    model = build_model(meta["config"], device)
    model.load_state_dict(state)
    os_ = args.output_stride or meta["config"]["output_stride"]
    model.set_output_stride(os_)
    train_args = argparse.Namespace(**meta["args"])
    train_args.dataset = args.dataset or train_args.dataset
    train_args.data_root = args.data_root or train_args.data_root
    _, val_set, num_classes = datasets(train_args)
    pad = train_args.crop if train_args.dataset == "shapes" else None
    loader = Loader(val_set, args.batch_size if pad else 1, EvalTransform(pad_to=pad))
    scales = tuple(args.scales) if args.multi_scale else (1.0,)
    t0 = time.perf_counter()
    cm = evaluate(model, loader, num_classes, device, scales, args.flip, progress=True)
    metrics = dict(checkpoint=args.checkpoint, output_stride=os_, scales=list(scales),
                   flip=args.flip, val_miou=cm.miou(), pixel_accuracy=cm.pixel_accuracy(),
                   per_class_iou=[None if np.isnan(v) else v for v in cm.iou()],
                   seconds=time.perf_counter() - t0, device=device)
    name = f"eval_os{os_}" + ("_ms" if args.multi_scale else "") + ("_flip" if args.flip else "")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(f"output stride {os_}, scales {list(scales)}, flip {args.flip}: "
          f"mIoU {cm.miou():.4f}, pixel accuracy {cm.pixel_accuracy():.4f}")
    return metrics


if __name__ == "__main__":
    main()
