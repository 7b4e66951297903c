"""Per-pixel softmax cross-entropy, mean over the pixels whose label is not ``ignore_index``
(ARCHITECTURE.md s. 8: VOC marks object boundaries 255)."""
from ..function import Function
from ..kernels import grid_1d


class SoftmaxCrossEntropy(Function):
    def __init__(self, ignore_index):
        self.ignore = int(ignore_index)

    def forward(self, logits, labels):
        xp = self.dev.xp
        N, C = logits.shape[:2] if logits.ndim == 4 else (0, 0)
        if (logits.ndim != 4 or labels.shape != (N,) + logits.shape[2:]
                or labels.dtype.kind not in "iu"):
            raise ValueError(f"softmax_cross_entropy: logits must be (N, C, H, W) and labels "
                             f"integer (N, H, W), got {logits.shape} and {labels.dtype} "
                             f"{labels.shape}")
        self.valid = labels != self.ignore
        bad = self.valid & ((labels < 0) | (labels >= C))
        if bad.any():
            raise ValueError(f"softmax_cross_entropy: label {int(labels[bad][0])} outside [0, {C}) "
                             f"and not ignore_index {self.ignore}")
        self.count = xp.maximum(xp.count_nonzero(self.valid), 1)  # all ignored: 0 / 1, not NaN
        logits = xp.ascontiguousarray(logits)  # both paths index it as flat C-order memory
        if not self.dev.uses_kernels:
            z = logits - logits.max(axis=1, keepdims=True)  # max-subtracted: exp never overflows
            self.p = xp.exp(z)
            s = self.p.sum(axis=1, keepdims=True)
            self.p /= s
            # Flat index of each pixel's label logit; ignored pixels pick class 0, weighted 0.
            HW = labels[0].size
            label = xp.where(self.valid, labels, 0).reshape(N, HW)
            self.pick = (xp.arange(N)[:, None] * C + label) * HW + xp.arange(HW)
            logp = z.ravel()[self.pick] - xp.log(s).reshape(N, HW)
            return -(logp * self.valid.reshape(N, HW)).sum() / self.count.astype(logits.dtype)
        self.labels = xp.where(self.valid, labels.astype(xp.int32), -1)  # -1 marks ignored
        self.p, loss = xp.empty_like(logits), xp.empty(labels.shape, dtype=logits.dtype)
        self.dev.launch(self.dev.module("loss", logits.dtype), "softmax_xent_forward",
                        grid_1d(loss.size), 256, (logits, self.labels, self.p, loss, C,
                                                  logits[0, 0].size, loss.size))
        return loss.sum() / self.count.astype(logits.dtype)

    def backward(self, gy):
        xp = self.dev.xp
        scale = (gy / self.count.astype(gy.dtype)).reshape(1)
        if not self.dev.uses_kernels:
            w = self.valid[:, None] * scale  # (N, 1, H, W): 0 on ignored pixels
            gx = self.p * w
            gx.ravel()[self.pick] -= w.reshape(self.pick.shape)  # - onehot: one element a pixel
            return gx, None
        gx = xp.empty_like(self.p)
        self.dev.launch(self.dev.module("loss", gx.dtype), "softmax_xent_backward",
                        grid_1d(gx.size), 256, (self.p, self.labels, scale.astype(gx.dtype), gx,
                                                gx.shape[1], gx[0, 0].size, gx.size))
        return gx, None


def softmax_cross_entropy(logits, labels, ignore_index=255):
    """Mean over non-ignored pixels of -log softmax(logits)[label]; logits (N, C, H, W), labels
    (N, H, W) integers in [0, C) or ``ignore_index`` (an array or a Tensor without grad)."""
    return SoftmaxCrossEntropy(ignore_index)(logits, labels)
