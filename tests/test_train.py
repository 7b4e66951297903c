"""The training and evaluation CLIs end to end on a tiny configuration (ARCHITECTURE.md s. 8-9)."""
import json

import numpy as np
import pytest

from minideeplab import evaluate, train

TINY = ["--device", "cpu", "--width", "0.125", "--middle-blocks", "1", "--crop", "33",
        "--batch-size", "2", "--train-size", "8", "--val-size", "4", "--val-every", "2"]


def params(path):
    state, optim, meta = train.load_checkpoint(str(path))
    return state, optim, meta


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path):
    out = tmp_path / "run"
    metrics = train.main(TINY + ["--iters", "3", "--out", str(out)])
    for name in ("checkpoint.npz", "metrics.json", "curves.png", "predictions.png"):
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    assert written["iterations"] == 3 and 0 <= written["val_miou"] <= 1
    assert written["val_miou"] == pytest.approx(metrics["val_miou"])
    for extra in ([], ["--output-stride", "8", "--multi-scale", "--scales", "0.75", "1.0",
                       "--flip"]):
        m = evaluate.main(["--checkpoint", str(out / "checkpoint.npz"), "--device", "cpu"] + extra)
        assert 0 <= m["val_miou"] <= 1
    # evaluating at the training output stride, single scale, repeats the training's final figure
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.npz")])["val_miou"] == \
        pytest.approx(metrics["val_miou"])
    # so does a checkpoint in the earlier format: the config without deeplabv3plus's defaults,
    # the dataset only in the command's arguments
    with np.load(out / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in ("resnet_units",
                                                                          "dropout")}
    meta["args"] = dict(meta.pop("data"), dataset="shapes", crop=33)
    np.savez(out / "old.npz", **dict(arrays, meta=np.array(json.dumps(meta))))
    assert evaluate.main(["--checkpoint", str(out / "old.npz")])["val_miou"] == \
        pytest.approx(metrics["val_miou"])


@pytest.mark.slow
def test_resume_from_halfway_gives_the_same_parameters(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train.main(TINY + ["--iters", "4", "--out", str(straight)])
    train.main(TINY + ["--iters", "4", "--stop-after", "2", "--out", str(halves)])
    state_half, _, meta = params(halves / "checkpoint.npz")
    assert meta["iteration"] == 2
    train.main(TINY + ["--iters", "4", "--out", str(halves), "--resume",
                       str(halves / "checkpoint.npz")])
    a, oa, _ = params(straight / "checkpoint.npz")
    b, ob, _ = params(halves / "checkpoint.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert any(not np.array_equal(a[k], state_half[k]) for k in a)  # training did move them


def test_voc_without_data_root_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--dataset", "voc", "--out", str(tmp_path)])
    assert "argument --data-root: --dataset voc needs it" in capsys.readouterr().err


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.main(["--dataset", "voc", "--data-root", str(tmp_path / "nowhere"),
                    "--out", str(tmp_path)])


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at"):
        evaluate.main(["--checkpoint", str(tmp_path / "none.npz")])
