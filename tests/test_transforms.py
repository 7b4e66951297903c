"""Augmentation keeps image and label aligned; the official scales, resizes and padding values;
the batch loader (ARCHITECTURE.md s. 8)."""
import numpy as np
import pytest
from scipy import ndimage

from minideeplab.data.transforms import (EvalTransform, Loader, TrainTransform,
                                         random_scale, resize_image, resize_label, scale_factors,
                                         to_chw)


def encoded(h=48, w=40, block=8, seed=0):
    """Label of random classes in block x block squares; the image's red channel = 10 x label,
    green/blue = the block's position, so any misalignment or mismatched flip shows."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 21, (h // block + 1, w // block + 1))
    ys, xs = np.arange(h) // block, np.arange(w) // block
    label = cls[ys][:, xs].astype(np.uint8)
    image = np.stack([label * 10, np.broadcast_to(ys[:, None] * 20, (h, w)),
                      np.broadcast_to(xs[None] * 20, (h, w))], -1).astype(np.uint8)
    return image, label, cls


@pytest.mark.parametrize("seed", range(8))
def test_image_and_label_stay_aligned(seed):
    image, label, cls = encoded(seed=seed)
    t = TrainTransform(crop=40, mean=(0, 0, 0), std=(1, 1, 1))  # output = image / 255
    out, lab = t(image, label, np.random.default_rng(seed))
    assert out.shape == (40, 40, 3) and out.dtype == np.float32 and lab.shape == (40, 40)
    px = np.round(out * 255).astype(int)
    # Away from block edges (5x5 neighbourhood of one class) bilinear interpolation is exact; the
    # crop's border counts as an edge (the image there blends pixels cropped away).
    flat = (ndimage.maximum_filter(lab, 5, mode="constant", cval=255)
            == ndimage.minimum_filter(lab, 5)) & (lab != 255)
    assert flat.sum() > 20
    np.testing.assert_array_equal(px[flat, 0], lab[flat].astype(int) * 10)
    # ... and the position channels point at a block holding that very class.
    np.testing.assert_array_equal(cls[px[flat, 1] // 20, px[flat, 2] // 20], lab[flat])


def test_flip_mirrors_both():
    image, label, _ = encoded()
    t = TrainTransform(crop=48, scale_range=None, mean=(0, 0, 0), std=(1, 1, 1))
    flips = 0
    for seed in range(6):
        out, lab = t(image, label, np.random.default_rng(seed))
        flipped = not np.array_equal(lab[:, :40], label)
        ref_img, ref_lab = (image[:, ::-1], label[:, ::-1]) if flipped else (image, label)
        cols = slice(8, 48) if flipped else slice(0, 40)  # where the (padded) original sits
        np.testing.assert_array_equal(lab[:, cols], ref_lab)
        np.testing.assert_array_equal(np.round(out[:, cols] * 255), ref_img)
        flips += flipped
    assert 0 < flips < 6


def test_padding_is_the_mean_pixel_and_ignore():
    image = np.full((10, 12, 3), 7, np.uint8)
    label = np.ones((10, 12), np.uint8)
    out, lab = TrainTransform(crop=16, scale_range=None, flip=False)(image, label,
                                                                    np.random.default_rng(0))
    pad = lab == 255
    assert pad.sum() == 16 * 16 - 10 * 12 and (lab[~pad] == 1).all()
    assert (out[pad] == 0).all()  # the mean pixel 127.5, normalised: exactly 0
    np.testing.assert_allclose(out[~pad], 7 / 127.5 - 1, rtol=1e-6)
    e_img, e_lab = EvalTransform(pad_to=16)(image, label)
    assert e_img.shape == (16, 16, 3) and (e_lab[10:] == 255).all() and (e_lab[:10, :12] == 1).all()
    assert (e_img[10:] == 0).all() and (e_img[:, 12:] == 0).all()
    np.testing.assert_allclose(e_img[:10, :12], 7 / 127.5 - 1, rtol=1e-6)


OFFICIAL_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]  # train.py's defaults: 0.5 to 2 by 0.25


def test_scale_set_is_the_official_one():
    np.testing.assert_array_equal(scale_factors(), OFFICIAL_SCALES)
    np.testing.assert_array_equal(scale_factors((0.5, 1.5), 0.5), [0.5, 1.0, 1.5])


def test_random_scale_draws_each_official_scale():
    image, label, _ = encoded(h=48, w=40)
    image = image.astype(np.float32)
    sizes = []
    for seed in range(200):
        img, lab = random_scale(image, label, np.random.default_rng(seed))
        assert img.shape[:2] == lab.shape and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= set(np.unique(label))  # nearest: no blended classes
        sizes.append(lab.shape)
    # TensorFlow truncates H * s: 48 x 40 at 1.25 is 60 x 50, at 0.75 36 x 30
    expected = {(int(48 * s), int(40 * s)) for s in OFFICIAL_SCALES}
    assert set(sizes) == expected
    counts = np.array([sizes.count(e) for e in expected])
    assert counts.min() > 10  # each of the 7 about 200 / 7 = 29 times
    uniform = {random_scale(image, label, np.random.default_rng(s), step=0)[1].shape
               for s in range(20)}
    assert len(uniform - expected) > 10  # step 0: any scale in [0.5, 2)
    same = random_scale(image, label, np.random.default_rng(0), (0.75, 0.75))
    assert same[1].shape == (36, 30)


def test_resizes_are_tensorflows_align_corners():
    """Against scipy's linear interpolation and a loop: output pixel i samples the input at
    i * (n - 1) / (m - 1); the label takes the nearest pixel, halves rounded up."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((7, 9, 3)).astype(np.float32)
    label = rng.integers(0, 21, (7, 9)).astype(np.uint8)
    for size in [(13, 17), (4, 5), (7, 9), (3, 20)]:
        ys = np.arange(size[0]) * (6 / (size[0] - 1))
        xs = np.arange(size[1]) * (8 / (size[1] - 1))
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        ref = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float64), [yy, xx],
                                                order=1) for c in range(3)], -1)
        np.testing.assert_allclose(resize_image(image, size), ref, atol=1e-5)
        near = np.empty(size, np.uint8)
        for i in range(size[0]):
            for j in range(size[1]):
                near[i, j] = label[int(ys[i] + 0.5), int(xs[j] + 0.5)]
        np.testing.assert_array_equal(resize_label(label, size), near)
    with pytest.raises(ValueError, match="float image"):
        resize_image(image.astype(np.uint8), (3, 3))


class Items:
    def __init__(self, n, size=8, fail_at=None):
        self.n, self.size, self.fail_at = n, size, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise ValueError(f"item {i} is broken")
        s = self.size
        return np.full((s, s, 3), i, np.uint8), np.full((s, s), i, np.uint8)


def test_loader_batches_formats_and_order():
    loader = Loader(Items(10), batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and len(Loader(Items(10), 4, drop_last=True)) == 2
    images, labels = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == np.float32 and images.flags.c_contiguous
    assert labels.shape == (4, 8, 8) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.concatenate([b[1][:, 0, 0] for b in batches]), np.arange(10))


def test_loader_is_deterministic_and_resumable():
    t = TrainTransform(crop=8)
    a = Loader(Items(10), 3, t, shuffle=True, seed=5, drop_last=True)
    b = Loader(Items(10), 3, t, shuffle=True, seed=5, drop_last=True, prefetch=0)
    run = [x for _, x in zip(range(10), a.forever())]  # 3 batches per epoch: crosses epochs
    resumed = [x for _, x in zip(range(5), b.forever(start=5))]
    for x, y in zip(run[5:], resumed):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    order = lambda e: np.concatenate([y[:, 0, 0] for _, y in a.epoch(e)])  # noqa: E731
    assert not np.array_equal(order(0), order(1))  # reshuffled each epoch
    other = Loader(Items(10), 3, t, shuffle=True, seed=6, drop_last=True)
    assert not np.array_equal(order(0), np.concatenate([y[:, 0, 0] for _, y in other]))


def test_loader_errors():
    with pytest.raises(ValueError, match="item 3 is broken"):  # raised across the prefetch thread
        list(Loader(Items(6, fail_at=3), 2))
    with pytest.raises(ValueError, match="sizes"):
        to_chw([(np.zeros((4, 4, 3)), np.zeros((4, 4))), (np.zeros((5, 4, 3)), np.zeros((5, 4)))])
    with pytest.raises(ValueError, match="no batch"):
        Loader(Items(3), 4, drop_last=True)
