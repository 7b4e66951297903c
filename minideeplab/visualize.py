"""Pictures: label maps in the VOC palette, training curves, prediction grids (matplotlib)."""
import numpy as np
# Figure, not pyplot: saving PNGs from the training CLI must not need (or change) a GUI backend.
from matplotlib.figure import Figure

from .data.voc import voc_palette


def colorize(label):
    """(H, W) class indices -> (H, W, 3) uint8 in the VOC palette (255, ignore: light cream)."""
    return voc_palette()[np.asarray(label, dtype=np.int64)]


def save_curves(history, path):
    """Loss per iteration and validation mIoU, side by side."""
    fig = Figure(figsize=(9, 3.2))
    a, b = fig.subplots(1, 2)
    a.plot(history["iter"], history["loss"], lw=0.8)
    a.set(xlabel="iteration", ylabel="training loss", yscale="log")
    b.plot(history["val_iter"], history["val_miou"], "o-")
    b.set(xlabel="iteration", ylabel="val mIoU", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_predictions(images, labels, preds, path, mean=0.0, std=1.0):
    """Rows of image | ground truth | prediction. ``images``: (N, 3, H, W), normalised."""
    n = len(images)
    fig = Figure(figsize=(6, 2 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for row, (img, lab, pred) in zip(axes, zip(images, labels, preds)):
        rgb = np.clip(img.transpose(1, 2, 0) * std + mean, 0, 1)
        for ax, pic, title in zip(row, (rgb, colorize(lab), colorize(pred)),
                                  ("image", "ground truth", "prediction")):
            ax.imshow(pic, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
