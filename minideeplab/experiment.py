"""What the ``train`` and ``evaluate`` command lines share (ARCHITECTURE.md s. 8): the pieces of
one experiment, each from explicit values, so neither command line needs the other's arguments.

Named for what a checkpoint records: an experiment is a model (``model.config``), the data it
was trained and is scored on (``data``: dataset name, sizes, seed), and how it is scored
(``predict_probs``, ``evaluate``). The device, the datasets and the model are built here; the
checkpoint that ties them together is written and read here; and both parsers check their
numbers and report a bad flag in one line the same way (``number``, ``ArgumentParser``).
"""
import argparse
import json
import math
import os
import zipfile
import zlib

import numpy as np
from tqdm import tqdm

from . import functional as F
from .config import no_grad
from .data.shapes import ShapesDataset
from .data.transforms import EvalTransform, Loader
from .data.voc import VOCSegmentation
from .device import gpu_available
from .flops import scale_dimension
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
                  data_root=None):
    """The ``split`` ("train" or "val") of dataset ``name``: "shapes" (``train_size`` or
    ``val_size`` generated images of ``image_size`` px from ``seed``) or "voc" (the VOC2012
    folder ``data_root``). Its keyword arguments are what a checkpoint's ``meta["data"]`` holds."""
    if name == "shapes":
        size = {"train": train_size, "val": val_size}[split]
        return ShapesDataset(split, size, image_size=image_size, seed=seed)
    if name != "voc":
        raise ValueError(f"dataset must be 'shapes' or 'voc', got {name!r}")
    if not data_root:
        raise ValueError("dataset 'voc' needs data_root, the VOC2012 folder")
    return VOCSegmentation(data_root, split)


def eval_loader(dataset, batch_size, prefetch=2):
    """Batches of ``dataset`` for scoring, at full size: the shapes' images share one size and
    batch; VOC's differ and go one at a time, as the official evaluation runs them."""
    same_size = isinstance(dataset, ShapesDataset)
    return Loader(dataset, batch_size if same_size else 1, EvalTransform(), prefetch=prefetch)


# -- model ----------------------------------------------------------------------------------------
def build_model(config, device):
    """``deeplabv3plus(**config)`` on ``device`` (config as ``model.config`` or a checkpoint
    holds it)."""
    return deeplabv3plus(**config).to(device)


# -- scoring --------------------------------------------------------------------------------------
def predict_probs(model, images, device, scales=(1.0,), flip=False):
    """Class probabilities (N, K, H, W) averaged over ``scales`` and, with ``flip``, mirrors.
    Scale s resizes H to ``flops.scale_dimension(H, s)``, the official code's size."""
    h, w = images.shape[2:]
    x = Tensor(images, device=device)
    total = 0
    with no_grad():
        for s in scales:
            size = (scale_dimension(h, s), scale_dimension(w, s))
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


def save_checkpoint(path, model, opt, meta):
    """One .npz: parameters and BN statistics, optimizer state, and ``meta`` (iteration, model
    config, data, history) as JSON; written to a temporary file, then renamed (atomic).
    CheckpointError, writing nothing, if a parameter, BN statistic or momentum is not finite."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    require_finite(arrays, f"not writing {path}")
    arrays["meta"] = np.array(json.dumps(meta))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_checkpoint(path):
    """(model_state, optim_state, meta) from ``save_checkpoint``'s file; ``meta["config"]`` has
    every argument of ``deeplabv3plus`` and ``meta["data"]`` the dataset's, also for checkpoints
    written before they were saved that way (config without defaults, data only in "args").
    One error for every file that is missing, truncated, corrupt or incomplete:
    CheckpointError("cannot read checkpoint PATH: reason")."""
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
    try:
        meta["config"] = model_config(**meta["config"])
        if "data" not in meta:
            args = meta["args"]
            meta["data"] = dict(name=args["dataset"], data_root=args["data_root"],
                                image_size=args["crop"], train_size=args["train_size"],
                                val_size=args["val_size"], seed=args["seed"])
    except (KeyError, TypeError) as e:
        raise fail(f"its meta does not describe a model and a dataset ({e})") from None
    return model_state, split("optim/"), meta
