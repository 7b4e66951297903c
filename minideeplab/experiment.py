"""What the ``train`` and ``evaluate`` command lines share (ARCHITECTURE.md s. 8): the pieces of
one experiment, each from explicit values, so neither command line needs the other's arguments.

Named for what a checkpoint records: an experiment is a model (``model.config``), the data it
was trained and is scored on (``data``: dataset name, sizes, seed, training split), and how it
is trained and scored (where weight decay goes, frozen BN; ``predict_probs``, ``evaluate``). The
device, the datasets and the model are built here; the checkpoint that ties them together is
written and read here; and both parsers check their numbers and report a bad flag in one line
the same way (``number``, ``ArgumentParser``).
"""
import argparse
import json
import math
import os
import zipfile
import zlib

import numpy as np
from tqdm import tqdm

from . import functional as F, nn
from .config import no_grad
from .data.shapes import ShapesDataset
from .data.transforms import EvalTransform, Loader
from .data.voc import VOCSegmentation, default_train_split
from .device import gpu_available
from .flops import MULTI_SCALES, scale_dimension
from .metrics import ConfusionMatrix
from .models.deeplab import deeplabv3plus, model_config
from .tensor import Tensor


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag, without the long usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind, low=None, high=None, above=None):
    """An argparse ``type``: a finite ``kind`` (int or float) >= ``low`` (or > ``above``) and
    <= ``high``; argparse names the flag in the error."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        for ok, rule in ((low is None or value >= low, f">= {low}"),
                         (above is None or value > above, f"> {above}"),
                         (high is None or value <= high, f"<= {high}")):
            if not ok:
                raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


def pick_device(name):
    """``name``, or for "auto" the GPU if CuPy sees one, else the CPU."""
    return ("cuda" if gpu_available() else "cpu") if name == "auto" else name


# -- data -----------------------------------------------------------------------------------------
def build_dataset(name, split, *, train_size=None, val_size=None, image_size=None, seed=0,
                  data_root=None, train_split=None):
    """The ``split`` ("train" or "val") of dataset ``name``: "shapes" (``train_size`` or
    ``val_size`` generated images of ``image_size`` px from ``seed``) or "voc" (the VOC2012
    folder ``data_root``; "train" reads ``train_split``, by default ``train_aug`` when present,
    else ``train``). Its keyword arguments are what a checkpoint's ``meta["data"]`` holds."""
    if name == "shapes":
        size = {"train": train_size, "val": val_size}[split]
        return ShapesDataset(split, size, image_size=image_size, seed=seed)
    if name != "voc":
        raise ValueError(f"dataset must be 'shapes' or 'voc', got {name!r}")
    if not data_root:
        raise ValueError("dataset 'voc' needs data_root, the VOC2012 folder")
    if split == "train":
        split = train_split or default_train_split(data_root)
    return VOCSegmentation(data_root, split)


def eval_loader(dataset, batch_size, prefetch=2):
    """Batches of ``dataset`` for scoring, as the official eval.py feeds them: each image padded
    to the dataset's ``eval_crop`` (VOC: 513) with the mean pixel and 255, so training's
    validation and ``evaluate`` score the same inputs. The shapes (all of one size, no padding)
    go in batches of ``batch_size``; VOC one at a time, as the official evaluation runs it."""
    pad_to = dataset.eval_crop
    return Loader(dataset, batch_size if pad_to is None else 1, EvalTransform(pad_to=pad_to),
                  prefetch=prefetch)


# -- model ----------------------------------------------------------------------------------------
def build_model(config, device):
    """``deeplabv3plus(**config)`` on ``device`` (config as ``model.config`` or a checkpoint
    holds it)."""
    return deeplabv3plus(**config).to(device)


# The official weight decay per backbone (train.py: "use 0.00004 for MobileNet-V2 or Xception
# model variants. Use 0.0001 for ResNet model variants").
WEIGHT_DECAY = {"xception65": 4e-5, "resnet101": 1e-4}


def decayed_weights(model):
    """The parameters the official code puts an L2 regulariser on (its gradient, weight_decay * w,
    is SGD's decay): the weight of every dense convolution, 3x3, 1x1, the pointwise half of a
    separable one, a shortcut, the logits (TF-slim ``weights_regularizer`` on ``conv2d`` in
    xception_arg_scope, resnet_arg_scope, model.py's ASPP, decoder and ``get_branch_logits``).
    Not depthwise weights (``regularize_depthwise=False``; ``split_separable_conv2d`` passes
    ``weights_regularizer=None``), BN's gamma and beta, or biases."""
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]


def no_weight_decay(model):
    """``SGD``'s ``no_decay`` predicate for ``model``: true for a parameter outside
    ``decayed_weights(model)``."""
    decayed = {id(p) for p in decayed_weights(model)}

    def exempt(p):
        return id(p) not in decayed
    return exempt


def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def freeze_batch_norm(model):
    """Fix every BN's gamma and beta (no gradient is accumulated for them); returns the
    parameters still trained, for the optimizer. With ``train_mode(model, freeze_bn=True)`` the
    moving statistics stay fixed too: the paper's second stage at output stride 8 (DeepLabv3,
    Sec. 4: "we then freeze batch normalization parameters, employ output stride = 8")."""
    for m in batch_norms(model):
        m.gamma.requires_grad = m.beta.requires_grad = False
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model, freeze_bn=False):
    """``model.train()``; with ``freeze_bn`` every BN stays in eval mode: it normalises with its
    moving statistics and leaves them unchanged (the official ``is_training and
    fine_tune_batch_norm``). Dropout still trains."""
    model.train()
    for m in batch_norms(model) if freeze_bn else ():
        m.eval()
    return model


# -- scoring --------------------------------------------------------------------------------------
# The decoder's output stride: the logits' stride with a decoder (the official
# decoder_output_stride); without one it is the output stride.
DECODER_OUTPUT_STRIDE = 4


def predict_probs(model, images, device, scales=(1.0,), flip=False):
    """Class probabilities (N, K, H, W) combined as the official ``predict_labels_multi_scale``:
    for each scale s (and, with ``flip``, its mirror image), the input resized to
    ``scale_dimension(H, s)``; the logits resized to the logits size ``multi_scale_logits`` gives
    that scale, ``scale_dimension(H, max(1, s) / stride)``, then to H x W; a softmax; the mean
    over scales and mirrors. Our model returns its logits already upsampled to its input, and the
    logits grid is a subset of that input's grid (513 at s = 0.75: input 385, logits 129, every
    3rd point), so resizing back to it recovers the official logits; s = 1 needs no resize."""
    h, w = images.shape[2:]
    stride = DECODER_OUTPUT_STRIDE if model.config["decoder"] else model.config["output_stride"]
    x = Tensor(images, device=device)
    xp = x.device.xp
    total = 0
    with no_grad():
        for s in scales:
            size = (scale_dimension(h, s), scale_dimension(w, s))
            xs = x if size == (h, w) else F.resize_bilinear(x, size)
            for mirrored in ((False, True) if flip else (False,)):
                logits = model(Tensor(xs.data[..., ::-1].copy(), device=device) if mirrored
                               else xs)
                if mirrored:
                    logits = Tensor(logits.data[..., ::-1].copy(), device=device)
                if s != 1:
                    logits_size = tuple(scale_dimension(n, max(1, s) / stride) for n in (h, w))
                    logits = F.resize_bilinear(F.resize_bilinear(logits, logits_size), (h, w))
                e = xp.exp(logits.data - logits.data.max(axis=1, keepdims=True))
                total = total + e / e.sum(axis=1, keepdims=True)
    return total / (len(scales) * (2 if flip else 1))


def evaluate(model, loader, num_classes, device, scales=(1.0,), flip=False, progress=False):
    """The ConfusionMatrix of ``model`` (switched to eval mode) over every batch of ``loader``."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for images, labels in tqdm(loader, desc="evaluate", disable=not progress):
        probs = predict_probs(model, images, device, scales, flip)
        cm.update(Tensor(probs.argmax(axis=1)).numpy(), labels)
    return cm


# -- checkpoints ----------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used; the message names the file and the reason."""


def require_finite(arrays, what):
    """CheckpointError("WHAT: N arrays hold NaN or inf (their names)") if any floating-point
    array of ``arrays`` (name -> array) does."""
    bad = sorted(k for k, v in arrays.items()
                 if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all())
    if bad:
        raise CheckpointError(f"{what}: {len(bad)} arrays hold NaN or inf "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")


def load_model(path, device, output_stride=None):
    """(model, meta) of checkpoint ``path``: rebuilt from its config on ``device``, its finite
    parameters loaded, at ``output_stride`` (default: the checkpoint's), in eval mode."""
    state, _, meta = load_checkpoint(path)
    require_finite(state, f"checkpoint {path} cannot be used")
    model = build_model(meta["config"], device)
    model.load_state_dict(state)
    model.set_output_stride(output_stride or meta["config"]["output_stride"]).eval()
    return model, meta


def add_inference_flags(p):
    """evaluate's and predict's flags for how a model is run: output stride, scales, flip,
    device; ``inference_scales`` reads them."""
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                   help="default: the checkpoint's (the training one)")
    p.add_argument("--multi-scale", action="store_true",
                   help=f"average over scales (default {MULTI_SCALES})")
    p.add_argument("--scales", type=number(float, above=0, high=4), nargs="+",
                   help="with --multi-scale: the scales to average")
    p.add_argument("--flip", action="store_true", help="also average left-right mirrored inputs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "emu"])
    p.add_argument("--threads", type=number(int, 1), default=1, help="CPU threads of the NumPy "
                   "path, BLAS on one (default 1, as train's)")


def inference_scales(p, args):
    """The scales ``add_inference_flags``' flags ask for; a parse error for --scales alone."""
    if args.scales and not args.multi_scale:
        p.error("argument --scales: only used with --multi-scale (add it, or drop --scales)")
    return tuple(args.scales or MULTI_SCALES) if args.multi_scale else (1.0,)


# The network a checkpoint's parameters are for, as meta["model_version"]. 2: the released one
# (pre-activation Xception units, BN eps per module, the ASPP's concatenation order;
# ARCHITECTURE.md s. 7). 1: the one before, whose checkpoints have no model_version; its
# parameters have the same names and shapes, so they load, and compute a different network.
MODEL_VERSION = 2
MODEL_CHANGE = "released network: pre-activation Xception units, BN eps per module, ASPP order"


def save_checkpoint(path, model, opt, meta):
    """One .npz: parameters and BN statistics, optimizer state, and ``meta`` (iteration, model
    config, data, history) as JSON with ``model_version`` (MODEL_VERSION) added; written to a
    temporary file, then renamed (atomic). CheckpointError, writing nothing, if a parameter, BN
    statistic or momentum is not finite."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    require_finite(arrays, f"not writing {path}")
    arrays["meta"] = np.array(json.dumps(dict(meta, model_version=MODEL_VERSION)))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path):
    """(model_state, optim_state, meta) from ``save_checkpoint``'s file; ``meta["config"]`` has
    every argument of ``deeplabv3plus``. One error for every file that is missing, truncated,
    corrupt or incomplete: CheckpointError("cannot read checkpoint PATH: reason"); one written
    for another model version (MODEL_VERSION; none recorded: 1): CheckpointError("checkpoint
    PATH is for model version V, this code builds version 2 (...); retrain it ...")."""
    def fail(reason):
        return CheckpointError(f"cannot read checkpoint {path}: {reason}")

    try:
        with np.load(path) as z:  # an .npy file loads as an array: no context manager
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data["meta"])) if "meta" in data else None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, zipfile.BadZipFile,
            zlib.error) as e:
        raise fail(str(e) or type(e).__name__) from None
    def split(prefix):
        return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}

    model_state = split("model/")
    if not model_state:
        raise fail("it holds no model parameters")
    if not isinstance(meta, dict):
        raise fail("it holds no meta (iteration, config, history)")
    missing = [k for k in ("iteration", "config", "history", "seconds") if k not in meta]
    if missing:
        raise fail(f"its meta lacks {', '.join(missing)}")
    version = meta.get("model_version", 1)
    if not isinstance(version, int):
        raise fail(f"its meta's model_version is {version!r}, not a whole number")
    if version != MODEL_VERSION:
        what = (f" (the {MODEL_CHANGE}), so its parameters would compute another network; "
                "retrain it (python -m minideeplab.train)" if version < MODEL_VERSION else
                "; read it with the minideeplab that wrote it")
        raise CheckpointError(f"checkpoint {path} is for model version {version}, this code "
                              f"builds version {MODEL_VERSION}{what}")
    if "data" not in meta:  # every checkpoint of this model version has it
        raise fail("its meta lacks data")
    try:
        meta["config"] = model_config(**meta["config"])
    except TypeError as e:
        raise fail(f"its meta does not describe a model ({e})") from None
    return model_state, split("optim/"), meta
