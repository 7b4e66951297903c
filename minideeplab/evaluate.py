"""``python -m minideeplab.evaluate``: mIoU of a checkpoint (paper Sec. 4; ARCHITECTURE.md s. 8).

One confusion matrix over the whole split, the images fed as the official eval.py feeds them
(VOC: each padded to 513 x 513 with the mean pixel and 255, as in training's validation); the
output stride can differ from training's (Sec. 3.1: atrous rates change, weights do not);
multi-scale inputs and left-right flips average the class probabilities as the official
``predict_labels_multi_scale`` does, as in the paper's Table 3 ("MS", "Flip"). The model and the
dataset are rebuilt from what the checkpoint saved (``experiment.load_checkpoint``).
"""
import argparse
import json
import os
import time

import numpy as np

from . import threads
from .experiment import (ArgumentParser, CheckpointError, add_inference_flags, build_dataset,
                         eval_loader, evaluate, inference_scales, load_model, number, pick_device,
                         predict_probs)

__all__ = ["evaluate", "predict_probs", "main"]  # the scoring functions live in experiment.py


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m minideeplab.evaluate", description=__doc__,
                       allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.npz written by train")
    add_inference_flags(p)
    p.add_argument("--dataset", choices=["shapes", "voc"], help="default: the training one")
    p.add_argument("--data-root")
    p.add_argument("--batch-size", type=number(int, 1), default=8,
                   help="shapes images per batch (VOC's go one at a time, padded to 513)")
    p.add_argument("--out", help="folder for metrics.json (default: eval_os<OS>[_ms][_flip] "
                                 "beside the checkpoint)")
    args = p.parse_args(argv)
    args.scales = inference_scales(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    with threads.limit(args.threads):
        return score(args)


def score(args):
    """The mIoU of ``args.checkpoint`` as ``parse_args`` read the flags; writes metrics.json."""
    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"no checkpoint at {args.checkpoint}")
    device = pick_device(args.device)
    try:
        model, meta = load_model(args.checkpoint, device, args.output_stride)
    except CheckpointError as e:
        raise SystemExit(str(e)) from None
    os_ = model.config["output_stride"]
    data = dict(meta["data"], name=args.dataset or meta["data"]["name"],
                data_root=args.data_root or meta["data"]["data_root"])
    if data["name"] == "voc" and not data["data_root"]:
        raise SystemExit("--dataset voc needs --data-root (the VOC2012 folder)")
    val_set = build_dataset(split="val", **data)
    if val_set.num_classes != meta["config"]["num_classes"]:
        raise SystemExit(f"checkpoint {args.checkpoint} predicts {meta['config']['num_classes']} "
                         f"classes but --dataset {data['name']} has {val_set.num_classes}")
    loader = eval_loader(val_set, args.batch_size)
    scales = args.scales
    t0 = time.perf_counter()
    cm = evaluate(model, loader, val_set.num_classes, device, scales, args.flip, progress=True)
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
