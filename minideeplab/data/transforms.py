"""Augmentation and batching (paper Sec. 4: random scale 0.5-2.0, crop, left-right flip;
ARCHITECTURE.md section 8), on NumPy HWC arrays with an explicit ``np.random.Generator``.

Images stay uint8 (H, W, 3) until ``normalize`` makes them float32; labels are uint8 (H, W).
Scaling uses Pillow (C, fast at 64-513 px): bilinear for the image, nearest for the label; both
map pixel centres, so image and label stay aligned.
"""
import queue
import threading

import numpy as np
from PIL import Image

# x / 127.5 - 1, the input scaling of the official DeepLab code (no ImageNet statistics: we train
# from scratch).
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def random_scale(image, label, rng, scale_range=(0.5, 2.0)):
    s = rng.uniform(*scale_range)
    size = (max(1, round(label.shape[1] * s)), max(1, round(label.shape[0] * s)))  # Pillow: (w, h)
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


def pad(image, label, size, fill, ignore_index=255):
    """Pad bottom and right to at least ``size`` x ``size``: the image with ``fill`` (the mean
    colour, which normalises to 0), the label with ``ignore_index`` so padding is not learned."""
    h, w = label.shape
    H, W = max(h, size), max(w, size)
    if (H, W) == (h, w):
        return image, label
    out = np.empty((H, W, 3), image.dtype)
    out[...] = fill
    out[:h, :w] = image
    lab = np.full((H, W), ignore_index, label.dtype)
    lab[:h, :w] = label
    return out, lab


def random_crop(image, label, rng, size, fill, ignore_index=255):
    """A ``size`` x ``size`` window at a uniform position, after padding if the input is smaller."""
    image, label = pad(image, label, size, fill, ignore_index)
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
    """Random scale, pad-and-crop to ``crop``, flip, normalise: (image, label, rng) ->
    (float32 (crop, crop, 3), uint8 (crop, crop))."""

    def __init__(self, crop, scale_range=(0.5, 2.0), flip=True, mean=MEAN, std=STD):
        self.crop, self.scale_range, self.flip = crop, scale_range, flip
        self.mean, self.std = mean, std
        self.fill = np.round(np.array(mean) * 255).astype(np.uint8)

    def __call__(self, image, label, rng):
        if self.scale_range is not None:
            image, label = random_scale(image, label, rng, self.scale_range)
        image, label = random_crop(image, label, rng, self.crop, self.fill)
        if self.flip:
            image, label = random_flip(image, label, rng)
        return normalize(image, self.mean, self.std), label


class EvalTransform:
    """Normalise only; with ``pad_to``, pad bottom/right to that size (mean / 255) so images of
    different sizes batch together, as the official code pads VOC val images to 513."""

    def __init__(self, mean=MEAN, std=STD, pad_to=None):
        self.mean, self.std, self.pad_to = mean, std, pad_to
        self.fill = np.round(np.array(mean) * 255).astype(np.uint8)

    def __call__(self, image, label, rng=None):
        if self.pad_to:
            image, label = pad(image, label, self.pad_to, self.fill)
        return normalize(image, self.mean, self.std), label


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
