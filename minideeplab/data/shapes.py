"""The embedded default dataset: overlapping labelled shapes generated from a seed
(ARCHITECTURE.md s. 8).

An item is ``(image, label)``: image uint8 (S, S, 3) RGB like a decoded JPEG; label uint8 (S, S)
in 0..5 (``CLASSES``) with 255 on a 2-px band along every boundary between labels, as in VOC.
Every colour (background and objects) comes from one distribution, so only shape tells the class.
Image ``i`` of a split depends only on (seed, split, i, the generator's parameters).
"""
import numpy as np

CLASSES = ("background", "disc", "square", "triangle", "ring", "bar")
SPLITS = {"train": 0, "val": 1}


def _mask(cls, yy, xx, cy, cx, size, angle, rng):
    """Pixels of one shape of class ``cls`` (``size`` = its diameter or side, in pixels)."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, (yy - cy) * c - (xx - cx) * s
    r = size / 2
    if cls == 1:
        return u * u + v * v <= r * r
    if cls == 2:  # side 0.85 size: about the disc's area, so area does not give the class either
        return np.maximum(abs(u), abs(v)) <= 0.85 * r
    if cls == 3:  # equilateral, circumradius 1.3 r: inside its three edges (inradius half that)
        return np.logical_and.reduce([u * np.cos(a) + v * np.sin(a) <= 0.65 * r
                                      for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6)])
    if cls == 4:
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (rng.uniform(0.4, 0.55) * r) ** 2)
    return (abs(u) <= 0.7 * size) & (abs(v) <= rng.uniform(0.15, 0.2) * size)  # bar: 1.4 x 0.3-0.4


def _colour(rng, others, min_dist=0.35):
    """A uniform RGB colour at least ``min_dist`` from ``others`` (so every object stays visible);
    the same rule for every class, so colour carries no class information."""
    for _ in range(20):
        c = rng.uniform(0, 1, 3)
        if all(np.linalg.norm(c - o) >= min_dist for o in others):
            break
    return c


def make_image(rng, image_size=64, max_objects=3, size_range=(0.3, 0.6), noise=0.02,
               max_angle=15, min_visible=0.85):
    """One (image, label) pair drawn from ``rng``; 2..max_objects objects of ``size_range`` x S,
    turned by up to +-``max_angle`` degrees, each later object hiding at most 1 - ``min_visible``
    of every earlier one. The defaults make a task that a small DeepLabv3+ learns in minutes on a
    CPU: with free rotation, telling a small disc from a turned square takes tens of thousands of
    iterations; with objects up to 40 % hidden the network mixes the classes of half-hidden shapes
    (README.md, "Training and evaluation", has the measurements)."""
    S = image_size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    # Background: a base colour with a faint grating (period 3-8 px: too fine to look like a bar).
    base = rng.uniform(0, 1, 3)
    a, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
    grating = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period + rng.uniform(0, 6.3))
    image = base + rng.uniform(0, 0.08) * grating[..., None]
    raw = np.zeros((S, S), np.uint8)
    inst = np.zeros((S, S), np.int32)  # which object each pixel shows (0 = background)
    areas, colours = [0], [base]
    for _ in range(rng.integers(2, max_objects + 1)):
        cls = int(rng.integers(1, len(CLASSES)))
        for _ in range(10):  # re-draw until every earlier object keeps min_visible of its area
            size = rng.uniform(*size_range) * S
            cy, cx = rng.uniform(0.15 * S, 0.85 * S, 2)  # so at least about half of it is inside
            angle = np.radians(rng.uniform(-max_angle, max_angle))
            m = _mask(cls, yy, xx, cy, cx, size, angle, rng)
            left = np.bincount(inst[~m], minlength=len(areas))
            if np.all(left[1:] >= min_visible * np.array(areas[1:])):
                break
        else:  # no place found: the image has one object fewer
            continue
        colour = _colour(rng, colours)
        # Linear shading across the object: its pixels are not one flat colour.
        t = rng.uniform(-0.15, 0.15, 2) / size
        shade = 1 + (xx[m] - cx) * t[0] + (yy[m] - cy) * t[1]
        image[m] = colour * shade[:, None]
        raw[m], inst[m] = cls, len(areas)  # the object's index in areas
        areas.append(int(m.sum()))
        colours.append(colour)
    image += rng.normal(0, noise, image.shape)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), boundary_band(raw)


def boundary_band(raw, ignore_index=255):
    """``raw`` with ``ignore_index`` on every pixel whose 4-neighbour has another label: a band
    one pixel wide on each side of each boundary (image borders are not boundaries)."""
    edge = np.zeros(raw.shape, bool)
    for d in (raw[1:] != raw[:-1], raw[:, 1:] != raw[:, :-1]):
        lo, hi = [slice(None)] * 2, [slice(None)] * 2
        axis = 0 if d.shape[0] < raw.shape[0] else 1
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return np.where(edge, np.uint8(ignore_index), raw)


class ShapesDataset:
    """``size`` images of ``image_size`` px, generated eagerly into ``images`` (N, S, S, 3) uint8
    and ``labels`` (N, S, S) uint8. Train and val draw from different seed streams for any
    ``seed``."""

    classes = CLASSES
    num_classes = len(CLASSES)
    ignore_index = 255
    eval_crop = None  # every image has the training crop's size: scored as it is, in batches

    def __init__(self, split="train", size=2000, image_size=64, seed=0, **kwargs):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if size < 0 or image_size < 16:
            raise ValueError(f"size={size} must be >= 0 and image_size={image_size} >= 16")
        self.split = split
        self.images = np.empty((size, image_size, image_size, 3), np.uint8)
        self.labels = np.empty((size, image_size, image_size), np.uint8)
        for i in range(size):
            rng = np.random.default_rng([seed, SPLITS[split], i])
            self.images[i], self.labels[i] = make_image(rng, image_size, **kwargs)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]
