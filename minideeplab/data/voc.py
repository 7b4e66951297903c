"""PASCAL VOC 2012 segmentation as laid out on disk (paper Sec. 4; ARCHITECTURE.md section 8).

``root`` is the ``VOC2012`` folder holding ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
(palette PNGs whose indices are the labels; 255 = boundary/ignore) and
``ImageSets/Segmentation/{train,val}.txt`` (one id per line). The SBD-augmented set is the split
``train_aug``: ids from ``ImageSets/Segmentation/train_aug.txt``, labels from
``SegmentationClassAug/<id>.png`` (palette or 8-bit grey PNGs of indices, the layout DeepLab's
scripts produce). Items are (image uint8 (H, W, 3) RGB, label uint8 (H, W)).

The paper trains on ``train_aug`` (10,582 images: VOC train plus SBD, none of them in val) and
scores ``val`` (1,449) padded to 513 x 513, the official ``eval_crop_size``.
"""
import os

import numpy as np
from PIL import Image

CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor")
LABEL_DIRS = {"train": "SegmentationClass", "val": "SegmentationClass",
              "trainval": "SegmentationClass", "train_aug": "SegmentationClassAug"}


def voc_palette(n=256):
    """The VOC colour map, (n, 3) uint8: bits of the class index spread over R, G, B from the high
    bit down (index 0 black, 1 dark red, ..., 255 a light cream for the ignore band)."""
    idx = np.arange(n)
    pal = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for ch in range(3):
            pal[:, ch] |= ((idx >> (3 * shift + ch)) & 1) << (7 - shift)
    return pal.astype(np.uint8)


def _open(path):
    """The decoded Pillow image at ``path``; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing file: {path}")
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for truncated/corrupt files
        raise ValueError(f"cannot read {path}: {e}") from None
    return img


def read_label(path):
    """Label indices of a palette (P) or grey (L) PNG, uint8; an RGB-coloured PNG is refused
    rather than guessed."""
    img = _open(path)
    if img.mode not in ("P", "L"):
        raise ValueError(f"{path}: label PNG has mode {img.mode}; expected palette (P) or grey (L)")
    return np.asarray(img)


def default_train_split(root):
    """``train_aug`` when its list is under ``root`` (the paper's training set), else ``train``."""
    aug = os.path.join(root, "ImageSets", "Segmentation", "train_aug.txt")
    return "train_aug" if os.path.isfile(aug) else "train"


class VOCSegmentation:
    """PASCAL VOC 2012 ``split`` ("train", "val", "trainval" or "train_aug") under ``root``; files
    are checked to exist up front and read on access."""

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = 255
    # The official eval.py's eval_crop_size for VOC: every val image (at most 500 x 500) is padded
    # to it with the mean pixel and 255, so each is seen as in training, at the crop size.
    eval_crop = 513

    def __init__(self, root, split="train"):
        if split not in LABEL_DIRS:
            raise ValueError(f"split must be one of {sorted(LABEL_DIRS)}, got {split!r}")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"VOC root not found: {root}")
        lst = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(lst):
            raise FileNotFoundError(f"VOC list not found: {lst}")
        self.split = split
        with open(lst) as f:
            self.ids = [line.split()[0] for line in f if line.strip()]
        self.files = [(os.path.join(root, "JPEGImages", f"{i}.jpg"),
                       os.path.join(root, LABEL_DIRS[split], f"{i}.png")) for i in self.ids]
        for path in (p for pair in self.files for p in pair):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"missing file (listed in {lst}): {path}")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        image_path, label_path = self.files[i]
        image, label = np.asarray(_open(image_path).convert("RGB")), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise ValueError(f"{label_path} is {label.shape} but {image_path} is {image.shape[:2]}")
        bad = label[(label >= self.num_classes) & (label != self.ignore_index)]
        if bad.size:
            raise ValueError(f"{label_path}: label value {bad[0]} is neither a class "
                             f"(0..{self.num_classes - 1}) nor {self.ignore_index}")
        return image, label
