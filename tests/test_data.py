"""The synthetic shapes dataset (ARCHITECTURE.md section 8): deterministic, labels in range, a thin
boundary band of 255, and colour that does not give the class; and the data pipeline is imported
only where it is used."""
import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from minideeplab.data.shapes import CLASSES, ShapesDataset, boundary_band


@pytest.fixture(scope="module")
def train():
    return ShapesDataset("train", size=200, image_size=64, seed=0)


def test_deterministic_per_seed_and_split(train):
    again = ShapesDataset("train", size=20, image_size=64, seed=0)
    np.testing.assert_array_equal(again.images, train.images[:20])  # image i depends on i only
    np.testing.assert_array_equal(again.labels, train.labels[:20])
    for other in (ShapesDataset("train", size=20, seed=1), ShapesDataset("val", size=20, seed=0)):
        assert (other.images != train.images[:20]).mean() > 0.5


def test_formats_and_label_range(train):
    image, label = train[3]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert label.shape == (64, 64) and label.dtype == np.uint8
    assert len(train) == 200 and train.num_classes == len(CLASSES) >= 6
    values = set(np.unique(train.labels).tolist())
    assert values == set(range(len(CLASSES))) | {255}  # every class occurs, nothing else


def test_crowded_images_skip_the_objects_that_find_no_place():
    """With many objects some find no place that leaves the earlier ones visible enough and are
    left out; the later ones still count the earlier ones' areas right (this used to raise)."""
    crowded = ShapesDataset("val", size=8, image_size=96, max_objects=15, seed=0)
    assert set(np.unique(crowded.labels).tolist()) <= set(range(len(CLASSES))) | {255}
    assert (crowded.labels[:, 2:-2, 2:-2] != 0).mean() > 0.5  # crowded indeed


def test_boundary_band_by_hand():
    raw = np.zeros((6, 7), np.uint8)
    raw[2:4, 2:5] = 3
    expected = raw.copy()
    expected[1:5, 2:5] = 255  # one pixel each side of the top and bottom edges
    expected[2:4, 1:6] = 255  # and of the left and right edges; corners stay (4-neighbours only)
    np.testing.assert_array_equal(boundary_band(raw), expected)


def test_band_separates_regions_and_is_thin(train):
    for label in train.labels:
        band = label == 255
        assert band.any() and band.mean() < 0.2
        # No two 4-adjacent counted pixels carry different classes: the band covers every boundary.
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            assert not np.any((a != b) & (a != 255) & (b != 255))
        # Only near boundaries: every band pixel is within 3 px of a counted pixel (not 1: a
        # triangle's tip or a sliver narrower than the band becomes band entirely).
        assert ndimage.distance_transform_edt(band).max() <= 3


def test_colour_does_not_give_the_class(train):
    # Every class's pixels spread over the colour cube, and a nearest-mean-colour classifier fit on
    # half the images does no better on the other half than always answering the commonest class.
    for c in range(len(CLASSES)):
        assert (train.images[train.labels == c] / 255).std(0).min() > 0.25, CLASSES[c]
    fg = (train.labels > 0) & (train.labels < 255)
    colours, classes = train.images[fg] / 255, train.labels[fg]
    first = np.arange(len(classes)) < fg[:100].sum()  # pixels of images 0..99
    centres = np.array([colours[first & (classes == c)].mean(0) for c in range(1, len(CLASSES))])
    test_colours, test_classes = colours[~first], classes[~first]
    guess = 1 + np.argmin(((test_colours[:, None] - centres) ** 2).sum(-1), axis=1)
    commonest = np.bincount(test_classes).max() / len(test_classes)
    assert (guess == test_classes).mean() < commonest + 0.02


def test_bad_arguments():
    with pytest.raises(ValueError, match="test"):
        ShapesDataset("test")
    with pytest.raises(ValueError, match="image_size=8"):
        ShapesDataset(image_size=8)


@pytest.mark.parametrize("module, absent", [
    ("minideeplab", ("PIL", "matplotlib", "minideeplab.data", "minideeplab.visualize")),
    ("minideeplab.train", ("minideeplab.evaluate",)),  # the command lines share experiment.py
    ("minideeplab.evaluate", ("minideeplab.train",)),
])
def test_import_leaves_out(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
