"""Per-pixel softmax cross-entropy, mean over the pixels whose label is not ``ignore_index``
(ARCHITECTURE.md s. 8: VOC marks object boundaries 255).

An ignored pixel takes no part: its logits, even NaN or infinite ones, reach neither the loss nor
the gradient (which is 0 there), on every device. With no pixel counted (all ignored, or an empty
batch) the loss is 0 and the gradient 0 (or empty), not 0 / 0.
"""
import numpy as np

from ..function import Function
from ..kernels import full_checks, launch


def check_labels(labels, num_classes, ignore_index=255):
    """ValueError naming the first label outside [0, ``num_classes``) that is not
    ``ignore_index``, checked on the array's own device (on ``cuda``: one device-to-host sync;
    check a batch on the host, before it moves, instead)."""
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"softmax_cross_entropy: label {int(labels[bad][0])} outside "
                         f"[0, {num_classes}) and not ignore_index {ignore_index}")
    return valid


class SoftmaxCrossEntropy(Function):
    """``checked``: the labels were checked on the host before they moved to the device."""

    name, reals = "softmax_cross_entropy", ("logits",)

    def __init__(self, ignore_index, checked=False):
        self.ignore, self.checked = int(ignore_index), checked

    def check(self, logits, labels):
        N, C = logits.shape[:2] if logits.ndim == 4 else (0, 0)
        if (logits.ndim != 4 or C < 1 or labels.shape != (N,) + logits.shape[2:]
                or labels.dtype.kind not in "iu"):
            raise ValueError(f"softmax_cross_entropy: logits must be (N, C, H, W) with C >= 1 "
                             f"classes and labels integer (N, H, W), got {logits.shape} and "
                             f"{labels.dtype} {labels.shape}")
    def _count(self, labels, num_classes, check):
        """The valid pixels (labels checked when ``check``) and their count."""
        self.valid = (check_labels(labels, num_classes, self.ignore) if check
                      else labels != self.ignore)
        self.count = self.dev.xp.maximum(self.dev.xp.count_nonzero(self.valid), 1)  # 0 / 1, not NaN

    def forward_cpu(self, logits, labels):
        xp, (N, C) = self.dev.xp, logits.shape[:2]
        self._count(labels, C, not self.checked)
        logits = xp.ascontiguousarray(logits)  # indexed as flat C-order memory (self.pick)
        z = logits - logits.max(axis=1, keepdims=True)  # max-subtracted: exp never overflows
        self.p = xp.exp(z)
        s = self.p.sum(axis=1, keepdims=True)
        self.p /= s
        # Flat index of each pixel's label logit; ignored pixels pick class 0, then add 0 (a
        # select, not a product with 0, which a NaN logit would make NaN).
        HW = logits.shape[2] * logits.shape[3]
        label = xp.where(self.valid, labels, 0).reshape(N, HW)
        self.pick = (xp.arange(N)[:, None] * C + label) * HW + xp.arange(HW)
        logp = z.ravel()[self.pick] - xp.log(s).reshape(N, HW)
        logp = xp.where(self.valid.reshape(N, HW), logp, logp.dtype.type(0))
        # 0 - sum, not -sum: the same for every sum but 0, which stays +0 as on the kernel path.
        return (0 - logp.sum()) / self.count.astype(logits.dtype)

    def forward_kernel(self, logits, labels):
        # Device labels are checked only where every launch is checked (the tests): a step must
        # not wait for the GPU. Unchecked, the kernels give a label outside [0, C) a NaN loss and
        # gradient, which the loss, read after the update, shows (loss.cu).
        self._count(labels, logits.shape[1], not self.checked and full_checks())
        xp = self.dev.xp
        self.labels = labels.astype(xp.int32, copy=False)
        self.p, loss = xp.empty(logits.shape, logits.dtype), xp.empty(labels.shape, logits.dtype)
        launch(self.dev, "loss", "softmax_xent_forward",
               (logits, self.labels, self.p, loss, logits.shape[1], _pixels(logits), loss.size,
                self.ignore), n=loss.size)
        return loss.sum() / self.count.astype(logits.dtype)

    def backward_cpu(self, gy):
        w = self.valid[:, None] * self._scale(gy)  # (N, 1, H, W): 0 on ignored pixels
        gx = self.p * w
        self.dev.xp.copyto(gx, 0, where=~self.valid[:, None])  # 0, where p * 0 can be NaN
        gx.ravel()[self.pick] -= w.reshape(self.pick.shape)  # - onehot: one element a pixel
        return gx, None

    def backward_kernel(self, gy):
        gx, scale = self.dev.xp.empty_like(self.p), self._scale(gy).astype(self.p.dtype)
        launch(self.dev, "loss", "softmax_xent_backward",
               (self.p, self.labels, scale, gx, gx.shape[1], _pixels(gx), gx.size, self.ignore),
               n=gx.size)
        return gx, None

    def _scale(self, gy):
        """d(loss)/d(each pixel's loss) as a 1-element array: gy / the number of valid pixels."""
        return (gy / self.count.astype(gy.dtype)).reshape(1)


def _pixels(a):
    """H * W of an (N, C, H, W) array (also when N or C is 0)."""
    return a.shape[2] * a.shape[3]


def softmax_cross_entropy(logits, labels, ignore_index=255):
    """Mean over non-ignored pixels of -log softmax(logits)[label]; logits (N, C, H, W), labels
    (N, H, W) integers in [0, C) or ``ignore_index`` (an array or a Tensor without grad). NumPy
    labels are checked on the host before they move to the logits' device: pass them so, not as
    a device Tensor, and the step needs no device-to-host sync for the check."""
    checked = isinstance(labels, np.ndarray) and np.ndim(logits) == 4
    if checked:
        check_labels(labels, logits.shape[1], ignore_index)
    return SoftmaxCrossEntropy(ignore_index, checked)(logits, labels)
