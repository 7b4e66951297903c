"""``predict`` on a generated image with a checkpoint of the default preset (shrunk, trained two
iterations here), the overlay's legend and sizes, the padding, and one-line errors."""
import numpy as np
import pytest
from PIL import Image

from minideeplab import predict, train
from minideeplab.config import no_grad
from minideeplab.data.voc import voc_palette
from minideeplab.experiment import build_model, load_checkpoint
from minideeplab.tensor import Tensor

TINY = ["--device", "cpu", "--width", "0.125", "--middle-blocks", "1", "--crop", "33",
        "--batch-size", "2", "--train-size", "4", "--val-size", "2", "--val-every", "2",
        "--iters", "2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(TINY + ["--out", str(out)])
    return str(out / "checkpoint.npz")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    image[10:30, 15:35] = (200, 30, 30)  # a square on noise
    path = tmp_path_factory.mktemp("images") / "photo.jpg.png"
    Image.fromarray(image).save(path)
    return str(path), image


def test_predict_writes_label_and_overlay_padded_as_the_official_eval(checkpoint, photo,
                                                                      tmp_path):
    path, image = photo
    predict.main(["--checkpoint", checkpoint, path, "--out", str(tmp_path), "--crop", "33",
                  "--device", "cpu"])
    label_png = Image.open(tmp_path / "photo.jpg_label.png")
    assert label_png.mode == "P" and label_png.size == (50, 40)
    label = np.asarray(label_png)
    # the reference: the image scaled to [-1, 1], zero-padded (the mean pixel) at the bottom and
    # right to 65 = 2 * 32 + 1 (it exceeds --crop 33), the model's argmax, cropped back
    state, _, meta = load_checkpoint(checkpoint)
    model = build_model(meta["config"], "cpu")
    model.load_state_dict(state)
    model.eval()
    x = np.zeros((1, 3, 65, 65), np.float32)
    x[0, :, :40, :50] = image.transpose(2, 0, 1) / 127.5 - 1
    with no_grad():
        expected = model(Tensor(x)).numpy().argmax(axis=1)[0, :40, :50]
    np.testing.assert_array_equal(label, expected)
    overlay = Image.open(tmp_path / "photo.jpg_overlay.png")
    n = len(np.unique(label))
    assert overlay.size == (50 + predict.LEGEND_WIDTH, max(40, predict.SWATCH * n))
    # evaluate's options run too
    predict.main(["--checkpoint", checkpoint, path, "--out", str(tmp_path / "ms"), "--crop", "33",
                  "--device", "cpu", "--flip", "--multi-scale", "--scales", "0.75", "1",
                  "--output-stride", "16"])
    assert Image.open(tmp_path / "ms" / "photo.jpg_label.png").size == (50, 40)


def test_padded_size():
    assert predict.padded_size(500, 375, 513) == 513  # VOC: the official eval crop
    assert predict.padded_size(600, 400, 513) == 609 == 19 * 32 + 1
    assert predict.padded_size(40, 50, 33) == 65


def test_overlay_legend_and_sizes():
    image = np.full((20, 30, 3), 100, np.uint8)
    label = np.zeros((20, 30), np.uint8)
    label[5:10, 5:10], label[12:, 20:] = 15, 3
    names = [f"class{i}" for i in range(21)]
    canvas = np.asarray(predict.overlay(image, label, names))
    pal = voc_palette()
    # three classes present: one legend row each, taller than the image
    assert canvas.shape == (3 * predict.SWATCH, 30 + predict.LEGEND_WIDTH, 3)
    for row, c in enumerate((0, 3, 15)):
        centre = canvas[row * predict.SWATCH + predict.SWATCH // 2, 30 + predict.SWATCH // 2]
        np.testing.assert_array_equal(centre, pal[c])
    np.testing.assert_array_equal(canvas[7, 7], np.round((100 + pal[15].astype(float)) / 2))
    np.testing.assert_array_equal(canvas[0, 0], [50, 50, 50])  # class 0 is black
    assert (canvas[20:, :30] == 255).all()  # below the image: white


def test_bad_inputs_give_one_line_errors(checkpoint, photo, tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(SystemExit) as e:
        predict.main(["--checkpoint", checkpoint, photo[0], str(bad), "--out", str(tmp_path)])
    assert str(e.value).startswith(f"cannot read image {bad}:") and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        predict.main(["--checkpoint", checkpoint, photo[0], "--out", str(tmp_path),
                      "--class-names", "background", "thing"])
    assert str(e.value) == (f"checkpoint {checkpoint} predicts 6 classes but 2 class names are "
                            "given (--class-names)")
    with pytest.raises(SystemExit, match=r"^cannot read checkpoint .*missing\.npz"):
        predict.main(["--checkpoint", str(tmp_path / "missing.npz"), photo[0], "--out",
                      str(tmp_path)])
    assert not list(tmp_path.glob("*_label.png"))  # nothing written on an error
