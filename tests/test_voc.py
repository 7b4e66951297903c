"""The PASCAL VOC 2012 reader on a tiny tree written in the real on-disk format (ARCHITECTURE.md
s. 8)."""
import numpy as np
import pytest
from PIL import Image

from minideeplab.data.voc import CLASSES, VOCSegmentation, default_train_split, voc_palette
from minideeplab.experiment import build_dataset


def write_label(path, label, mode="P"):
    img = Image.fromarray(label.astype(np.uint8))  # mode L: grey values = indices
    if mode == "P":
        img = img.convert("P")  # keeps the indices; attach the VOC palette as the real files do
        img.putpalette(voc_palette().ravel().tolist())
    img.save(path)


def make_tree(root, n=3, size=(20, 30)):
    """VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug, ImageSets/Segmentation}."""
    rng = np.random.default_rng(0)
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids, data = [f"2007_00{i:04d}" for i in range(n)], {}
    for i in ids:
        colour = rng.integers(0, 256, 3)
        image = np.broadcast_to(colour, size + (3,)).astype(np.uint8)  # flat: JPEG keeps it
        label = rng.integers(0, 21, size)
        label[0] = 255  # a boundary row
        Image.fromarray(image).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        write_label(root / "SegmentationClass" / f"{i}.png", label, "P")
        write_label(root / "SegmentationClassAug" / f"{i}.png", label, "L")
        data[i] = image, label
    for split, chosen in (("train", ids[:-1]), ("val", ids[-1:]), ("train_aug", ids)):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(chosen) + "\n")
    return data


def test_reads_images_and_palette_labels(tmp_path):
    data = make_tree(tmp_path)
    ids = list(data)
    with Image.open(tmp_path / "SegmentationClass" / f"{ids[0]}.png") as img:
        assert img.mode == "P"  # the test files really are palette images
    for split, expected in (("train", ids[:-1]), ("val", ids[-1:]), ("train_aug", ids)):
        ds = VOCSegmentation(tmp_path, split)
        assert ds.ids == expected and len(ds) == len(expected)
        for k, i in enumerate(expected):
            image, label = ds[k]
            assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
            assert label.dtype == np.uint8 and label.shape == (20, 30)
            np.testing.assert_array_equal(label, data[i][1])
            assert np.abs(image.astype(int) - data[i][0]).max() <= 3  # JPEG rounding only
    assert ds.num_classes == len(CLASSES) == 21 and ds.ignore_index == 255


def test_palette():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    np.testing.assert_array_equal(pal[[0, 1, 2, 15, 255]],
                                  [[0, 0, 0], [128, 0, 0], [0, 128, 0], [192, 128, 128],
                                   [224, 224, 192]])
    assert len({tuple(c) for c in pal}) == 256


def test_missing_root_list_and_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VOCSegmentation(tmp_path / "nowhere")
    data = make_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        VOCSegmentation(tmp_path, "trainval")
    with pytest.raises(ValueError, match="test"):
        VOCSegmentation(tmp_path, "test")
    missing = tmp_path / "JPEGImages" / f"{list(data)[0]}.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        VOCSegmentation(tmp_path, "train")


def test_corrupt_png_names_the_file(tmp_path):
    data = make_tree(tmp_path)
    bad = tmp_path / "SegmentationClass" / f"{list(data)[1]}.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = VOCSegmentation(tmp_path, "train")
    ds[0]
    with pytest.raises(ValueError, match=str(bad)):
        ds[1]
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=str(bad)):
        ds[1]


def test_out_of_range_label_names_file_and_value(tmp_path):
    data = make_tree(tmp_path)
    i = list(data)[0]
    label = data[i][1].copy()
    label[5, 7] = 50
    path = tmp_path / "SegmentationClass" / f"{i}.png"
    write_label(path, label)
    with pytest.raises(ValueError, match=rf"{path}.*value 50"):
        VOCSegmentation(tmp_path, "train")[0]


def test_rgb_label_is_refused(tmp_path):
    data = make_tree(tmp_path)
    i = list(data)[0]
    path = tmp_path / "SegmentationClass" / f"{i}.png"
    Image.fromarray(voc_palette()[data[i][1]]).save(path)  # colour-coded, not indices
    with pytest.raises(ValueError, match="mode RGB"):
        VOCSegmentation(tmp_path, "train")[0]


def test_training_reads_train_aug_when_it_is_listed(tmp_path):
    data = make_tree(tmp_path)
    assert default_train_split(tmp_path) == "train_aug"
    ds = build_dataset("voc", "train", data_root=str(tmp_path))
    assert ds.split == "train_aug" and ds.ids == list(data)
    assert build_dataset("voc", "train", data_root=str(tmp_path), train_split="train").ids == \
        list(data)[:-1]
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").unlink()
    assert build_dataset("voc", "train", data_root=str(tmp_path)).split == "train"
    assert build_dataset("voc", "val", data_root=str(tmp_path)).eval_crop == 513
