"""Per-pixel softmax cross-entropy, mean over the pixels whose label is not ``ignore_index``
(ARCHITECTURE.md s. 8: VOC marks object boundaries 255)."""
from ..function import Function
from ..kernels import launch


class SoftmaxCrossEntropy(Function):
    def __init__(self, ignore_index):
        self.ignore = int(ignore_index)

    def check(self, logits, labels):
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

    def forward_cpu(self, logits, labels):
        xp, (N, C) = self.dev.xp, logits.shape[:2]
        logits = xp.ascontiguousarray(logits)  # indexed as flat C-order memory (self.pick)
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

    def forward_kernel(self, logits, labels):
        xp = self.dev.xp
        self.labels = xp.where(self.valid, labels.astype(xp.int32), -1)  # -1 marks ignored
        self.p, loss = xp.empty(logits.shape, logits.dtype), xp.empty(labels.shape, logits.dtype)
        launch(self.dev, "loss", "softmax_xent_forward",
               (logits, self.labels, self.p, loss, logits.shape[1], logits[0, 0].size, loss.size),
               n=loss.size)
        return loss.sum() / self.count.astype(logits.dtype)

    def backward_cpu(self, gy):
        w = self.valid[:, None] * self._scale(gy)  # (N, 1, H, W): 0 on ignored pixels
        gx = self.p * w
        gx.ravel()[self.pick] -= w.reshape(self.pick.shape)  # - onehot: one element a pixel
        return gx, None

    def backward_kernel(self, gy):
        gx, scale = self.dev.xp.empty_like(self.p), self._scale(gy).astype(self.p.dtype)
        launch(self.dev, "loss", "softmax_xent_backward",
               (self.p, self.labels, scale, gx, gx.shape[1], gx[0, 0].size, gx.size), n=gx.size)
        return gx, None

    def _scale(self, gy):
        """d(loss)/d(each pixel's loss) as a 1-element array: gy / the number of valid pixels."""
        return (gy / self.count.astype(gy.dtype)).reshape(1)


def softmax_cross_entropy(logits, labels, ignore_index=255):
    """Mean over non-ignored pixels of -log softmax(logits)[label]; logits (N, C, H, W), labels
    (N, H, W) integers in [0, C) or ``ignore_index`` (an array or a Tensor without grad)."""
    return SoftmaxCrossEntropy(ignore_index)(logits, labels)
