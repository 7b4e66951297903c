"""Augmentation and batching as the official input pipeline has them (input_preprocess.py and
core/preprocess_utils.py of research/deeplab; paper Sec. 4; ARCHITECTURE.md s. 8): random scale
from a discrete set, pad with the mean pixel and 255, random crop, left-right flip. NumPy HWC
arrays and an explicit ``np.random.Generator``.

Images are normalised first (uint8 -> float32, x / 127.5 - 1, the official
``_preprocess_zero_mean_unit_range``, which the official code applies in the model), so the mean
pixel it pads with, 127.5, is exactly 0 here. Labels stay uint8 (H, W). Scaling is TensorFlow 1's
``resize_bilinear`` (image) and ``resize_nearest_neighbor`` (label), both with
``align_corners=True``, so image and label stay aligned.
"""
import queue
import threading

import numpy as np

from ..functional.resize import _axis as bilinear_taps

# x / 127.5 - 1, the input scaling of the official DeepLab code (no ImageNet statistics: we train
# from scratch).
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# The official train.py's min_scale_factor, max_scale_factor, scale_factor_step_size.
SCALE_RANGE, SCALE_STEP = (0.5, 2.0), 0.25


def scale_factors(scale_range=SCALE_RANGE, step=SCALE_STEP):
    """The discrete scales ``get_random_scale`` draws from: ``int((max - min) / step + 1)`` values
    evenly spaced from min to max (0.5, 0.75, ..., 2.0 by default)."""
    lo, hi = scale_range
    return np.linspace(lo, hi, int((hi - lo) / step + 1))


def random_scale_factor(rng, scale_range=SCALE_RANGE, step=SCALE_STEP):
    """One scale as ``get_random_scale``: min if min == max; uniform in [min, max) if ``step`` is
    0; else one of ``scale_factors`` with equal probability."""
    lo, hi = scale_range
    if lo == hi:
        return lo
    if step == 0:
        return rng.uniform(lo, hi)
    return rng.choice(scale_factors(scale_range, step))


def resize_image(image, size):
    """Float (H, W, C) ``image`` resized to ``size`` = (h, w) as TensorFlow 1's
    ``resize_bilinear(align_corners=True)``: interpolated along x, then along y."""
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"resize_image: expected a float image (normalise first), got "
                         f"{image.dtype}")
    (y0, y1, wy), (x0, x1, wx) = (bilinear_taps(n, m, True) for n, m in zip(image.shape, size))
    wx, wy = wx.astype(image.dtype)[:, None], wy.astype(image.dtype)[:, None, None]
    left = image[:, x0]
    rows = left + (image[:, x1] - left) * wx
    top = rows[y0]
    return top + (rows[y1] - top) * wy


def resize_label(label, size):
    """(H, W) ``label`` resized to ``size`` as TensorFlow 1's
    ``resize_nearest_neighbor(align_corners=True)``: source index round(i * (n - 1) / (m - 1)),
    halves rounded up, so classes are never blended."""
    def index(n, m):
        src = np.arange(m) * ((n - 1) / (m - 1) if m > 1 else 0.0)
        return np.minimum(np.floor(src + 0.5).astype(np.intp), n - 1)
    return label[index(label.shape[0], size[0])[:, None], index(label.shape[1], size[1])]


def random_scale(image, label, rng, scale_range=SCALE_RANGE, step=SCALE_STEP):
    """``randomly_scale_image_and_label`` with a scale from ``random_scale_factor``: the new size
    truncates H * s and W * s (float32, as TensorFlow computes it); s = 1 changes nothing."""
    s = random_scale_factor(rng, scale_range, step)
    if s == 1:
        return image, label
    size = tuple(max(1, int(np.float32(n) * np.float32(s))) for n in label.shape)
    return resize_image(image, size), resize_label(label, size)


def pad(image, label, size, ignore_index=255):
    """Pad bottom and right to at least ``size`` x ``size`` (``pad_to_bounding_box`` at offset
    0, 0): the normalised image with 0, the mean pixel, the label with ``ignore_index`` so that
    padding is neither learned nor scored."""
    h, w = label.shape
    H, W = max(h, size), max(w, size)
    if (H, W) == (h, w):
        return image, label
    out = np.zeros((H, W) + image.shape[2:], image.dtype)
    out[:h, :w] = image
    lab = np.full((H, W), ignore_index, label.dtype)
    lab[:h, :w] = label
    return out, lab


def random_crop(image, label, rng, size, ignore_index=255):
    """A ``size`` x ``size`` window at a uniform position, after padding if the input is smaller."""
    image, label = pad(image, label, size, ignore_index)
    y = rng.integers(0, label.shape[0] - size + 1)
    x = rng.integers(0, label.shape[1] - size + 1)
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def random_flip(image, label, rng):
    """Left-right flip with probability 1/2."""
    return (image[:, ::-1], label[:, ::-1]) if rng.random() < 0.5 else (image, label)


def normalize(image, mean=MEAN, std=STD):
    """uint8 RGB -> float32 (image / 255 - mean) / std."""
    return (image.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)


class TrainTransform:
    """Normalise, random scale (``scale_range`` None: none), pad-and-crop to ``crop``, flip:
    (image, label, rng) -> (float32 (crop, crop, 3), uint8 (crop, crop))."""

    def __init__(self, crop, scale_range=SCALE_RANGE, scale_step=SCALE_STEP, flip=True, mean=MEAN,
                 std=STD):
        self.crop, self.flip, self.mean, self.std = crop, flip, mean, std
        self.scale_range, self.scale_step = scale_range, scale_step

    def __call__(self, image, label, rng):
        image = normalize(image, self.mean, self.std)
        if self.scale_range is not None:
            image, label = random_scale(image, label, rng, self.scale_range, self.scale_step)
        image, label = random_crop(image, label, rng, self.crop)
        if self.flip:
            image, label = random_flip(image, label, rng)
        return image, label


class EvalTransform:
    """Normalise; with ``pad_to``, pad bottom/right to that size with the mean pixel and 255, as
    the official evaluation pads every VOC val image to its crop size, 513."""

    def __init__(self, mean=MEAN, std=STD, pad_to=None):
        self.mean, self.std, self.pad_to = mean, std, pad_to

    def __call__(self, image, label, rng=None):
        image = normalize(image, self.mean, self.std)
        if self.pad_to:
            image, label = pad(image, label, self.pad_to)
        return image, label


def to_chw(samples):
    """Collate [(HWC float32 image, HW label), ...] into (N, C, H, W) float32, (N, H, W) int64."""
    shapes = {s[1].shape for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of sizes {sorted(shapes)}: use batch_size=1 or "
                         "EvalTransform(pad_to=...)")
    images = np.stack([s[0] for s in samples]).transpose(0, 3, 1, 2)
    labels = np.stack([s[1] for s in samples]).astype(np.int64)
    return np.ascontiguousarray(images, dtype=np.float32), labels


class Loader:
    """Batches of ``dataset`` through ``transform`` (default ``EvalTransform()``).

    Batch ``b`` of epoch ``e`` depends only on (seed, e, b): the order is a permutation seeded by
    (seed, e) and the augmentation draws from a generator seeded by (seed, e, b). So
    ``forever(start=it)`` resumes a run at iteration ``it`` exactly, and the ``prefetch``
    background thread (batches made ahead; NumPy and Pillow release the GIL) changes nothing.
    """

    def __init__(self, dataset, batch_size, transform=None, shuffle=False, seed=0, drop_last=False,
                 prefetch=2):
        if batch_size < 1 or seed < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and seed={seed} >= 0")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.transform = transform or EvalTransform()
        self.drop_last, self.prefetch = drop_last, prefetch
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} samples make no batch of {batch_size} with drop_last")

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return self.epoch(0)

    def epoch(self, e, start=0):
        """The batches of epoch ``e`` from batch ``start`` on."""
        return _background(self._batches(e, start), self.prefetch)

    def forever(self, start=0):
        """Batches for iterations start, start + 1, ... across epochs (for training loops)."""
        def gen():
            it = start
            while True:
                yield from self._batches(it // len(self), it % len(self))
                it += len(self) - it % len(self)
        return _background(gen(), self.prefetch)

    def _batches(self, e, start):
        n = len(self.dataset)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, 0, e]).permutation(n)
        for b in range(start, len(self)):
            rng = np.random.default_rng([self.seed, 1, e, b])
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield to_chw([self.transform(*self.dataset[int(i)], rng) for i in idx])


def _background(batches, depth):
    """Yield from ``batches`` while a daemon thread makes up to ``depth`` of them ahead."""
    if depth <= 0:
        yield from batches
        return
    q, stop = queue.Queue(depth), threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:  # the consumer is slow or gone: check `stop` again
                pass

    def work():
        try:
            for batch in batches:
                put((True, batch))
                if stop.is_set():
                    return
            put((False, None))
        except Exception as e:  # re-raised in the consumer's thread
            put((False, e))

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
