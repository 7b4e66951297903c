"""``python -m minideeplab.train``: train DeepLabv3+ (paper Sec. 4; ARCHITECTURE.md s. 8).

Without arguments: the embedded shapes dataset, a small aligned-Xception DeepLabv3+ at output
stride 8 (``PRESET``), the GPU if CuPy sees one, else the CPU; ends with a trained model and a val
mIoU. ``--preset paper-voc --data-root .../VOC2012``: the paper's PASCAL VOC setting
(``PAPER_VOC``). The recipe is the official code's (train.py, utils/train_utils.py,
input_preprocess.py): poly lr, SGD with momentum 0.9, weight decay on conv weights but not on
depthwise weights, BN or biases, random scale from {0.5, 0.75, ..., 2.0}, crops padded with the
mean pixel and 255, left-right flips; ``--freeze-bn`` and ``--init-from`` for a second stage.
Every random choice of iteration ``it`` is seeded by (seed, it), so a run resumed from a
checkpoint ends with exactly the parameters of a run that never stopped.
"""
import argparse
import contextlib
import fcntl
import json
import math
import os
import shlex
import signal
import sys
import threading
import time

import numpy as np
from tqdm import tqdm

from . import functional as F
from . import threads
from .data.transforms import MEAN, SCALE_RANGE, SCALE_STEP, STD, Loader, TrainTransform
from .experiment import (WEIGHT_DECAY, ArgumentParser, CheckpointError, build_dataset,
                         build_model, eval_loader, evaluate, freeze_batch_norm, load_checkpoint,
                         no_weight_decay, number, pick_device, predict_probs, require_finite,
                         save_checkpoint, train_mode)
from .models.deeplab import model_config
from .optim import SGD, poly_lr
from .tensor import Tensor
from .visualize import save_curves, save_predictions

# The default preset ("shapes"): a small DeepLabv3+ that trains on the shapes in minutes on 2 CPU
# cores (README.md, "Training and evaluation", has the measurements behind each choice).
# - ASPP and decoder widths shrink with the backbone: the paper's 256 and 48 are for width 1.
# - BN statistics move faster than the paper's decay 0.9997: the run is ~1000x shorter.
# - Output stride 8, not the paper's 16: on 65x65 images OS 16 leaves a 5x5 feature map.
# - Dense 3x3 convs in the ASPP and decoder, not separable ones: at these widths a depthwise +
#   pointwise pair learns the shapes' corners slowly, and the atrous convs cost 1x1 convs here
#   (rates 12-36 on a 9x9 map).
# - A high base lr: He-initialised weights under BN take small relative steps.
# - No random scaling: the shapes already vary in size.
# - 2000 iterations, not 1800: with the released (pre-activation) Xception units 1800 ended at
#   0.831-0.843.
# weight_decay is the backbone's official value; --weight-decay defaults to WEIGHT_DECAY[backbone]
# for any preset and backbone (the entry is read by benchmarks/train_step.py).
PRESET = dict(dataset="shapes", backbone="xception65", width=0.25, middle_blocks=2,
              aspp_channels=64, low_level_channels=24, separable_aspp=False, bn_momentum=0.05,
              output_stride=8, crop=65, batch_size=8, iters=2000, lr=0.3,
              weight_decay=WEIGHT_DECAY["xception65"], scale_range=None, train_size=4000,
              val_size=200, val_every=500)

# The paper's PASCAL VOC setting (Sec. 4, and the official train.py's flags for train_aug): the
# released Xception-65 DeepLabv3+ (separable ASPP and decoder, BN with each module's official
# decay) at output stride 16; 513x513 crops, batch 16, base lr 0.007, 30,000 iterations; random
# scale 0.5-2.0 in steps of 0.25. Needs a GPU; each validation scores 1,449 images at 513x513.
PAPER_VOC = dict(PRESET, dataset="voc", width=1.0, middle_blocks=16, aspp_channels=256,
                 low_level_channels=48, separable_aspp=True, bn_momentum=None, output_stride=16,
                 crop=513, batch_size=16, iters=30000, lr=0.007, scale_range=list(SCALE_RANGE),
                 val_every=5000)
PRESETS = {"shapes": PRESET, "paper-voc": PAPER_VOC}


# Flags a resumed run must keep: the data order and augmentation (seed, sizes, split, batch,
# crop, scales), the lr schedule (lr, iters) and what is trained and how (weight decay, frozen
# BN) depend on them, and resuming promises the parameters of a run that never stopped.
RESUME_FIXED = ("dataset", "train_split", "train_size", "val_size", "crop", "scale_range",
                "scale_step", "batch_size", "lr", "weight_decay", "freeze_bn", "iters", "seed")


def parse_args(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "python -m minideeplab.train"
    # The preset gives the other flags their defaults, so it is read first.
    first = ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    first.add_argument("--preset", default="shapes", choices=list(PRESETS))
    preset = PRESETS[first.parse_known_args(argv)[0].preset]
    p = ArgumentParser(prog=prog, description=__doc__, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shapes", choices=list(PRESETS),
                   help="defaults of the other flags: the synthetic shapes on a CPU (default), or "
                   "the paper's PASCAL VOC setting (with --data-root)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "emu"])
    p.add_argument("--dataset", default=preset["dataset"], choices=["shapes", "voc"])
    p.add_argument("--data-root", help="VOC2012 folder (JPEGImages/, SegmentationClass/, ...)")
    p.add_argument("--train-split", choices=["train", "train_aug", "trainval"],
                   help="VOC split to train on (default: train_aug, the paper's, when "
                   "ImageSets/Segmentation/train_aug.txt exists, else train)")
    p.add_argument("--backbone", default=preset["backbone"], choices=["xception65", "resnet101"])
    p.add_argument("--width", type=number(float, above=0), default=preset["width"],
                   help="channel multiplier")
    p.add_argument("--middle-blocks", type=number(int, 0), default=preset["middle_blocks"])
    p.add_argument("--aspp-channels", type=number(int, 1), default=preset["aspp_channels"])
    p.add_argument("--low-level-channels", type=number(int, 1),
                   default=preset["low_level_channels"])
    p.add_argument("--bn-momentum", type=number(float, above=0, high=1),
                   default=preset["bn_momentum"], help="one momentum (1 - decay) for every BN; "
                   "paper-voc's default: each module's official decay")
    p.add_argument("--freeze-bn", action="store_true", help="BN statistics, gamma and beta "
                   "fixed (the paper's second stage at output stride 8, with --init-from)")
    p.add_argument("--decoder", action=argparse.BooleanOptionalAction, default=True,
                   help="DeepLabv3+ (default), or DeepLabv3 with --no-decoder")
    p.add_argument("--separable-aspp", action=argparse.BooleanOptionalAction,
                   default=preset["separable_aspp"], help="atrous separable 3x3 convs in the ASPP "
                   "and decoder (the paper's SC, Table 5) instead of dense ones")
    p.add_argument("--output-stride", type=int, default=preset["output_stride"],
                   choices=[8, 16, 32])
    p.add_argument("--iters", type=number(int, 1), default=preset["iters"])
    p.add_argument("--batch-size", type=number(int, 2), default=preset["batch_size"],
                   help="at least 2: batch norm after the image pooling (one value per image and "
                   "channel) needs two values")
    p.add_argument("--crop", type=number(int, 16), default=preset["crop"],
                   help="training crop (and the shapes' image size), at least 16")
    p.add_argument("--scale-range", type=number(float, above=0, high=4), nargs=2,
                   default=preset["scale_range"], metavar=("MIN", "MAX"),
                   help="random scaling (paper-voc: 0.5 2.0; shapes: none, their objects already "
                   "vary in size)")
    p.add_argument("--scale-step", type=number(float, 0), default=SCALE_STEP,
                   help="the scales are MIN, MIN + STEP, ..., MAX (the official 0.25); 0: uniform "
                   "in [MIN, MAX)")
    p.add_argument("--lr", type=number(float, above=0), default=preset["lr"],
                   help="base lr of the poly schedule")
    p.add_argument("--weight-decay", type=number(float, 0), help="L2 on conv weights, not on "
                   "depthwise weights, BN or biases (default: the official value for the "
                   "backbone: " + ", ".join(f"{k} {v:g}" for k, v in WEIGHT_DECAY.items()) + ")")
    p.add_argument("--train-size", type=number(int, 1), default=preset["train_size"],
                   help="shapes images")
    p.add_argument("--val-size", type=number(int, 1), default=preset["val_size"])
    p.add_argument("--val-every", type=number(int, 1), default=preset["val_every"],
                   help="iterations between validations (each also writes the checkpoint)")
    p.add_argument("--out", default="runs/train", help="folder for checkpoint, metrics, figures; "
                   "one run at a time")
    p.add_argument("--resume", help="checkpoint .npz to continue from")
    p.add_argument("--init-from", help="checkpoint .npz whose parameters and BN statistics start "
                   "a new run (the official tf_initial_checkpoint); its model may differ in "
                   "output stride or BN momentum")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that already holds a run's checkpoint")
    p.add_argument("--stop-after", type=number(int, 1), help="stop after this many iterations, "
                   "leaving a checkpoint to --resume from (the schedule still runs to --iters)")
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--threads", type=number(int, 1), default=1, help="CPU threads of the NumPy "
                   "path, BLAS on one (default 1: on cores another process shares, threads wait "
                   "for each other)")
    args = p.parse_args(argv)
    if args.dataset == "voc" and not args.data_root:
        p.error("argument --data-root: --dataset voc needs it (the VOC2012 folder)")
    if args.train_split and args.dataset != "voc":
        p.error(f"argument --train-split: only for --dataset voc (this is {args.dataset})")
    if args.scale_range and args.scale_range[0] > args.scale_range[1]:
        p.error(f"argument --scale-range: MIN {args.scale_range[0]} > MAX {args.scale_range[1]}")
    if args.dataset == "shapes" and args.train_size < args.batch_size:
        p.error(f"argument --train-size: {args.train_size} images make no batch of "
                f"--batch-size {args.batch_size}")
    if args.resume and args.init_from:
        p.error("argument --init-from: not with --resume (a resumed run continues from its own "
                "checkpoint)")
    if args.weight_decay is None:
        args.weight_decay = WEIGHT_DECAY[args.backbone]
    return args


@contextlib.contextmanager
def run_directory(args):
    """Claim ``args.out`` for this run; yields its checkpoint path. Checked before any work: the
    folder is writable, no other run holds its lock (two runs would write over each other's
    files), and it holds no run's checkpoint unless that is the one resumed or --overwrite."""
    ckpt = os.path.join(args.out, "checkpoint.npz")
    try:
        os.makedirs(args.out, exist_ok=True)
        lock = open(os.path.join(args.out, "train.lock"), "w")
    except OSError as e:
        raise SystemExit(f"--out {args.out}: cannot write there ({e.strerror or e})") from None
    with lock:
        try:  # released by the OS however this process ends
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"--out {args.out}: another training run is writing there; wait "
                             "for it to end or choose another --out") from None
        resumed_here = args.resume and os.path.exists(args.resume) and \
            os.path.exists(ckpt) and os.path.samefile(args.resume, ckpt)
        if os.path.exists(ckpt) and not (resumed_here or args.overwrite):
            raise SystemExit(f"--out {args.out} already holds a run ({ckpt}): continue it with "
                             f"--resume {ckpt}, start over with --overwrite, or choose another "
                             "--out")
        yield ckpt


def resume_command(argv, ckpt, drop=("--resume",)):
    """The command that continues this run from ``ckpt``: ``argv`` without --overwrite and the
    flags in ``drop`` (with their values), plus --resume ``ckpt``."""
    kept, items = [], iter(argv)
    for a in items:
        if a in drop:
            next(items, None)  # and its value
        elif a != "--overwrite" and a.split("=")[0] not in drop:
            kept.append(a)
    return shlex.join(["python", "-m", "minideeplab.train", *kept, "--resume", ckpt])


@contextlib.contextmanager
def ctrl_c_flag():
    """Yields a list that the first Ctrl-C appends to (the loop saves and stops at the end of
    the iteration, so the checkpoint is exact); a second Ctrl-C interrupts at once."""
    flag = []
    if threading.current_thread() is not threading.main_thread():  # signals go to the main one
        yield flag
        return

    def first(signum, frame):
        flag.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def resume(args, model, opt):
    """Load ``args.resume`` into ``model`` and ``opt`` if it describes the same run; returns its
    (iteration, history, seconds). SystemExit naming what differs otherwise."""
    try:
        model_state, optim_state, saved = load_checkpoint(args.resume)
        if "lr" not in optim_state:
            raise CheckpointError(f"cannot read checkpoint {args.resume}: it holds no optimizer "
                                  "state")
    except CheckpointError as e:
        raise SystemExit(f"--resume: {e}") from None
    config = model.config
    changed = sorted(k for k in config if saved["config"][k] != config[k])
    if changed:
        raise SystemExit("--resume: the checkpoint's model differs in " + ", ".join(
            f"{k} ({saved['config'][k]!r} there, {config[k]!r} here)" for k in changed))
    started = saved.get("args", {})
    flags = [k for k in RESUME_FIXED if k in started and started[k] != getattr(args, k)]
    if flags:
        def listed(values):
            return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in zip(flags, values))
        raise SystemExit(
            f"--resume: the run was started with {listed(started[k] for k in flags)}; this "
            f"command has {listed(getattr(args, k) for k in flags)}. A resumed run keeps them "
            "(the data order and the lr schedule depend on them); to change them, start a new "
            "run (another --out, or --overwrite)")
    try:
        model.load_state_dict(model_state)
        opt.load_state_dict(optim_state)
    except ValueError as e:
        raise SystemExit(f"--resume: cannot read checkpoint {args.resume}: {e}") from None
    if args.stop_after and args.stop_after <= saved["iteration"]:
        raise SystemExit(f"--stop-after {args.stop_after}: the checkpoint is already at "
                         f"iteration {saved['iteration']}")
    return saved["iteration"], saved["history"], saved["seconds"]


def train(args, argv=()):
    """The run ``args`` describes (``argv``: the command's arguments, for the resume hint)."""
    device = pick_device(args.device)
    with run_directory(args) as ckpt:
        return run(args, argv, device, ckpt)


def initialise(path, model):
    """--init-from: load the parameters and BN statistics of checkpoint ``path`` into ``model``
    (the official ``tf_initial_checkpoint``); SystemExit naming the file and the reason if they
    cannot be read, are not finite or do not fit the model."""
    try:
        state, _, meta = load_checkpoint(path)
        require_finite(state, f"checkpoint {path}")
        model.load_state_dict(state)
    except ValueError as e:  # CheckpointError included
        raise SystemExit(f"--init-from: {e}") from None
    print(f"initialised from {path} (iteration {meta['iteration']}, output stride "
          f"{meta['config']['output_stride']})")


def run(args, argv, device, ckpt):
    data = dict(name=args.dataset, data_root=args.data_root, image_size=args.crop,
                train_size=args.train_size, val_size=args.val_size, seed=args.seed,
                train_split=args.train_split)
    train_set, val_set = build_dataset(split="train", **data), build_dataset(split="val", **data)
    data["train_split"] = train_set.split  # the one read, for evaluate and the record
    print(f"training on {args.dataset} {train_set.split} ({len(train_set)} images), validating on "
          f"{len(val_set)}")
    num_classes = train_set.num_classes
    # deeplabv3plus's arguments from the flags; the checkpoint saves them (model.config), and
    # evaluate and --resume rebuild or compare the model from there.
    config = model_config(
        backbone=args.backbone, num_classes=num_classes, output_stride=args.output_stride,
        decoder=args.decoder, separable_aspp=args.separable_aspp, width=args.width,
        middle_blocks=args.middle_blocks, aspp_channels=args.aspp_channels,
        low_level_channels=args.low_level_channels, bn_momentum=args.bn_momentum,
        seed=args.seed)
    model = build_model(config, device)
    if args.init_from:
        initialise(args.init_from, model)
    trained = freeze_batch_norm(model) if args.freeze_bn else model.parameters()
    # Weight decay only where the official code regularises (experiment.decayed_weights).
    opt = SGD(trained, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay,
              no_decay=no_weight_decay(model))
    start, history, seconds = 0, dict(iter=[], loss=[], val_iter=[], val_miou=[]), 0.0
    last_good = None  # (path, iteration) of the newest checkpoint this run can continue from
    if args.resume:
        start, history, seconds = resume(args, model, opt)
        last_good = (args.resume, start)
    loader = Loader(train_set, args.batch_size,
                    TrainTransform(args.crop, args.scale_range, args.scale_step), shuffle=True,
                    seed=args.seed, drop_last=True)
    batches = loader.forever(start)
    val_loader = eval_loader(val_set, args.batch_size)

    def meta(it):
        return dict(iteration=it, config=model.config, data=data, seed=args.seed, history=history,
                    seconds=seconds + time.perf_counter() - t0, args=vars(args))

    def last_good_text():
        return ("no checkpoint was written" if last_good is None else
                f"the last good checkpoint is {last_good[0]} (iteration {last_good[1]})")

    def save(it):
        nonlocal last_good
        try:
            save_checkpoint(ckpt, model, opt, meta(it))
        except CheckpointError as e:
            raise SystemExit(f"iteration {it}: {e}; {last_good_text()} (try a lower --lr)") \
                from None
        last_good = (ckpt, it)

    t0 = time.perf_counter()
    train_mode(model, args.freeze_bn)
    stop = min(args.iters, args.stop_after or args.iters)
    bar = tqdm(range(start, stop), initial=start, total=args.iters, desc=f"train ({device})")
    cm = None  # the last validation's confusion matrix (the loop always ends with one)
    with ctrl_c_flag() as interrupted:
        for it in bar:
            images, labels = next(batches)
            F.seed(args.seed * 1_000_003 + it)  # dropout masks depend on (seed, it) only
            opt.lr = poly_lr(args.lr, it, args.iters)
            logits = model(Tensor(images, device=device))
            loss = F.softmax_cross_entropy(logits, labels)  # NumPy labels: checked on the host
            opt.zero_grad()
            loss.backward()
            opt.step()
            # Read after the update: no device-to-host sync inside the step. A non-finite step
            # is then applied before the exit, but never saved (save_checkpoint refuses it).
            value = float(loss.item())
            if not math.isfinite(value):
                raise SystemExit(f"iteration {it}: the loss is {value}; stopping: "
                                 f"{last_good_text()} (try a lower --lr)")
            history["iter"].append(it)
            history["loss"].append(value)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{opt.lr:.4f}")
            if (it + 1) % args.val_every == 0 or it + 1 == stop:
                cm = evaluate(model, val_loader, num_classes, device)
                history["val_iter"].append(it + 1)
                history["val_miou"].append(cm.miou())
                bar.write(f"iteration {it + 1}: val mIoU {cm.miou():.4f}")
                train_mode(model, args.freeze_bn)
                save(it + 1)
            elif interrupted:
                save(it + 1)
            if interrupted:
                bar.close()
                print(f"interrupted after iteration {it + 1}; saved {ckpt}. Continue with:\n"
                      f"  {resume_command(argv, ckpt)}", file=sys.stderr)
                raise SystemExit(130)
    bar.close()
    if stop < args.iters:
        command = resume_command(argv, ckpt, drop=("--resume", "--stop-after"))
        print(f"stopped after iteration {stop}; continue with:\n  {command}")
        return None
    if cm is None:  # resumed at the very end: nothing was validated in this call
        cm = evaluate(model, val_loader, num_classes, device)
        save(args.iters)
    metrics = dict(val_miou=cm.miou(), per_class_iou=[None if np.isnan(v) else v for v in cm.iou()],
                   pixel_accuracy=cm.pixel_accuracy(), iterations=args.iters,
                   seconds=meta(args.iters)["seconds"], device=device, config=model.config)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    save_curves(history, os.path.join(args.out, "curves.png"))
    model.eval()
    shown = []  # the first 4 val images (one batch of the shapes; VOC's come one at a time)
    for images, labels in eval_loader(val_set, 4, prefetch=0):
        preds = Tensor(predict_probs(model, images, device).argmax(axis=1)).numpy()
        shown += zip(images, labels, preds)
        if len(shown) >= 4:
            break
    save_predictions(*zip(*shown[:4]), os.path.join(args.out, "predictions.png"),
                     mean=np.array(MEAN), std=np.array(STD))
    print(f"val mIoU {metrics['val_miou']:.4f}, pixel accuracy {metrics['pixel_accuracy']:.4f}, "
          f"{metrics['seconds']:.0f} s on {device}; wrote {args.out}/"
          "{checkpoint.npz,metrics.json,curves.png,predictions.png}")
    return metrics


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        with threads.limit(args.threads):
            return train(args, argv)
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C: nothing more is saved
        ckpt = os.path.join(args.out, "checkpoint.npz")
        raise SystemExit("interrupted; " + (f"the newest checkpoint is {ckpt}" if
                                           os.path.exists(ckpt) else "no checkpoint written")) \
            from None


if __name__ == "__main__":
    main()
