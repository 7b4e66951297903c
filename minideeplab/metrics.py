"""Segmentation metrics (paper Sec. 4; ARCHITECTURE.md s. 8): one confusion matrix accumulated over
a whole split, then per-class IoU, mIoU and pixel accuracy from it.

Convention: ``cm[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p`` (rows =
ground truth); pixels labelled ``ignore_index`` (255, VOC's boundary band) are not counted.
"""
import numpy as np

from .device import get_device


def confusion_matrix(pred, label, num_classes, ignore_index=255):
    """(num_classes, num_classes) int64 counts for integer arrays ``pred`` and ``label`` of one
    shape (NumPy or CuPy; counted on the host). Raises ValueError on out-of-range values."""
    cpu = get_device("cpu")
    pred, label = cpu.asarray(pred).ravel(), cpu.asarray(label).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"pred has {pred.size} pixels but label has {label.size}")
    keep = label != ignore_index
    pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
    for name, a in (("pred", pred), ("label", label)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} holds values in [{a.min()}, {a.max()}], outside "
                             f"0..{num_classes - 1} (and not ignore_index={ignore_index})")
    counts = np.bincount(label * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(cm):
    """TP / (TP + FP + FN) per class, float64; NaN for a class absent from both ground truth and
    prediction (union 0), so it does not count in the mean."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm):
    """Mean IoU over the classes present (union > 0, i.e. in ground truth or prediction)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm):
    """Correct pixels / counted pixels (255 excluded)."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


class ConfusionMatrix:
    """Accumulates over batches: ``update(pred, label)``, then ``miou()``, ``iou()``,
    ``pixel_accuracy()`` and the counts in ``matrix``."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, label):
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_index)

    def reset(self):
        self.matrix[...] = 0

    def iou(self):
        return iou_per_class(self.matrix)

    def miou(self):
        return mean_iou(self.matrix)

    def pixel_accuracy(self):
        return pixel_accuracy(self.matrix)
