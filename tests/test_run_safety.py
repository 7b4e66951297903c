"""What the training and evaluation commands guarantee (README, "What the training command
guarantees"): no work lost to a mistake, no wrong number with exit status 0, one line where a
traceback would be. Tiny configurations; subprocesses where the process itself matters (Ctrl-C,
the lock, the exit status and the one-line message)."""
import fcntl
import hashlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minideeplab import evaluate, predict, train
from minideeplab.experiment import (MODEL_VERSION, CheckpointError, load_checkpoint,
                                    save_checkpoint)
from tests.test_voc import make_tree, write_label

TINY = ["--device", "cpu", "--threads", "1", "--width", "0.125", "--middle-blocks", "1",
        "--crop", "33", "--batch-size", "2", "--train-size", "8", "--val-size", "4"]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(module, *argv, **kwargs):
    return subprocess.run([sys.executable, "-m", f"minideeplab.{module}", *argv],
                          capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny finished run (4 iterations, checkpoints at 2 and 4). Tests only copy it."""
    out = tmp_path_factory.mktemp("run") / "run"
    train.main(TINY + ["--iters", "4", "--val-every", "2", "--out", str(out)])
    return out


@pytest.fixture
def run(run_dir, tmp_path):
    """A copy of ``run_dir`` this test may change."""
    return shutil.copytree(run_dir, tmp_path / "run")


# -- work lost ------------------------------------------------------------------------------------
def test_rerun_without_resume_is_refused_and_keeps_the_checkpoint(run):
    before = digest(run / "checkpoint.npz")
    with pytest.raises(SystemExit, match=r"already holds a run .*--resume .*--overwrite"):
        train.main(TINY + ["--iters", "2", "--out", str(run)])
    assert digest(run / "checkpoint.npz") == before
    train.main(TINY + ["--iters", "2", "--val-every", "2", "--out", str(run), "--overwrite"])
    assert load_checkpoint(str(run / "checkpoint.npz"))[2]["iteration"] == 2


def test_one_run_per_directory(run):
    before = digest(run / "checkpoint.npz")
    with open(run / "train.lock", "w") as held:  # as a running training holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = cli("train", *TINY, "--iters", "4", "--out", str(run), "--resume",
                str(run / "checkpoint.npz"))
    assert r.returncode == 1 and "another training run is writing there" in r.stderr
    assert digest(run / "checkpoint.npz") == before


def test_unwritable_out_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"--out .*file/run: cannot write there"):
        train.main(TINY + ["--out", str(tmp_path / "file" / "run")])


def test_voc_validation_and_evaluate_score_the_same_padded_images(tmp_path):
    """Val images larger than --crop and of different sizes (500 x 375 among them), each padded
    to 513 as the official evaluation pads them: training's last validation and evaluate agree."""
    ids = list(make_tree(tmp_path / "VOC2012", n=4, size=(40, 50)))
    rng = np.random.default_rng(1)
    root = tmp_path / "VOC2012"
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(
        root / "JPEGImages" / f"{ids[-2]}.jpg")
    write_label(root / "SegmentationClass" / f"{ids[-2]}.png", rng.integers(0, 21, (375, 500)))
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[-2:]) + "\n")
    out = tmp_path / "run"
    metrics = train.main(TINY + ["--dataset", "voc", "--data-root", str(root), "--train-split",
                                 "train", "--iters", "2", "--val-every", "2", "--out", str(out)])
    assert 0 <= metrics["val_miou"] <= 1 and (out / "predictions.png").stat().st_size > 0
    assert evaluate.main(["--checkpoint", str(out / "checkpoint.npz"), "--device", "cpu"])[
        "val_miou"] == metrics["val_miou"]


def test_no_checkpoint_with_non_finite_values(tmp_path):
    # lr 1e5 blows the BN statistics up at iteration 3 while the loss is still finite
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"iteration 3: not writing .*NaN or inf.*the last good "
                                         r"checkpoint is .*checkpoint.npz \(iteration 2\)"):
        train.main(TINY + ["--iters", "10", "--val-every", "1", "--lr", "1e5", "--out", str(out)])
    state, optim, meta = load_checkpoint(str(out / "checkpoint.npz"))
    assert meta["iteration"] == 2
    assert all(np.isfinite(v).all() for v in list(state.values()) + list(optim.values()))


def test_save_checkpoint_refuses_non_finite_and_writes_nothing(run, tmp_path):
    state, _, _ = load_checkpoint(str(run / "checkpoint.npz"))

    class Holder:  # state_dict() is all save_checkpoint asks of a model or an optimizer
        def __init__(self, state):
            self.state = state

        def state_dict(self):
            return self.state

    name = sorted(state)[0]
    bad = dict(state, **{name: np.full_like(state[name], np.nan)})
    with pytest.raises(CheckpointError, match=f"1 arrays hold NaN or inf .model/{name}"):
        save_checkpoint(str(tmp_path / "c.npz"), Holder(bad), Holder({}), {})
    assert not list(tmp_path.glob("c*"))


def test_non_finite_loss_names_only_an_existing_checkpoint(tmp_path):
    # --lr 1e9: the second loss is inf, before any checkpoint
    with pytest.raises(SystemExit, match="the loss is (nan|inf); stopping: no checkpoint was "
                                         "written"):
        train.main(TINY + ["--iters", "10", "--val-every", "5", "--lr", "1e9",
                           "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.slow
def test_ctrl_c_saves_and_the_printed_command_resumes_exactly(tmp_path):
    out = tmp_path / "run"
    argv = TINY + ["--iters", "1000", "--val-every", "1000", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "minideeplab.train", *argv],
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    while not re.search(r"\| *[1-9]\d*/1000", seen):  # tqdm's bar: an iteration done
        char = proc.stderr.read(1)
        assert char, f"training ended early: {seen}"
        seen += char
    proc.send_signal(signal.SIGINT)
    err = seen + proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    k = load_checkpoint(str(out / "checkpoint.npz"))[2]["iteration"]
    assert k >= 1 and f"interrupted after iteration {k}; saved " in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:3] == ["python", "-m", "minideeplab.train"]
    assert command[-2:] == ["--resume", str(out / "checkpoint.npz")]
    train.main(command[3:] + ["--stop-after", str(k + 2)])
    train.main(argv[:-1] + [str(tmp_path / "straight"), "--stop-after", str(k + 2)])
    a = load_checkpoint(str(out / "checkpoint.npz"))
    b = load_checkpoint(str(tmp_path / "straight" / "checkpoint.npz"))
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def test_stop_after_prints_a_command_that_finishes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--iters", "4", "--val-every", "2", "--stop-after", "2",
                              "--out", str(out)]) is None
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert "--stop-after" not in command
    assert command[-2:] == ["--resume", str(out / "checkpoint.npz")]
    assert train.main(command[3:])["iterations"] == 4


# -- wrong numbers with exit 0 --------------------------------------------------------------------
BAD_NUMBERS = [
    ("--iters", "0", "must be >= 1"),
    ("--iters", "-5", "must be >= 1"),
    ("--stop-after", "0", "must be >= 1"),
    ("--stop-after", "-1", "must be >= 1"),
    ("--bn-momentum", "nan", "must be a finite number"),
    ("--bn-momentum", "1.5", "must be <= 1"),
    ("--width", "0", "must be > 0"),
    ("--width", "-1", "must be > 0"),
    ("--middle-blocks", "-2", "must be >= 0"),
    ("--threads", "0", "must be >= 1"),
    ("--crop", "1", "must be >= 16"),
    ("--crop", "15", "must be >= 16"),
    ("--batch-size", "1", "must be >= 2"),
    ("--val-every", "0", "must be >= 1"),
    ("--aspp-channels", "0", "must be >= 1"),
    ("--low-level-channels", "0", "must be >= 1"),
    ("--seed", "-1", "must be >= 0"),
    ("--lr", "nan", "must be a finite number"),
    ("--lr", "0", "must be > 0"),
    ("--weight-decay", "-1e-4", "must be >= 0"),
    ("--train-size", "0", "must be >= 1"),
    ("--val-size", "0", "must be >= 1"),
    ("--width", "abc", "expected float, got 'abc'"),
]


@pytest.mark.parametrize("flag, value, message", BAD_NUMBERS,
                         ids=[f"{flag}={value}" for flag, value, _ in BAD_NUMBERS])
def test_numeric_flags_are_checked_at_parse_time(capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args([f"{flag}={value}"])
    err = capsys.readouterr().err
    got = "" if "'" in message else f", got {value}"
    assert e.value.code == 2 and f"argument {flag}: {message}{got}" in err


@pytest.mark.parametrize("command", [evaluate, predict])
def test_inference_threads_are_checked_at_parse_time(capsys, command):
    argv = ["--checkpoint", "x.npz", "--threads", "0"] + (
        ["--out", "o", "a.png"] if command is predict else [])
    with pytest.raises(SystemExit) as e:
        command.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --threads: must be >= 1, got 0" in err


@pytest.mark.parametrize("argv, message", [
    (["--scale-range", "-1", "-0.5"], "argument --scale-range: must be > 0, got -1"),
    (["--scale-range", "1000", "1000"], "argument --scale-range: must be <= 4, got 1000"),
    (["--scale-range", "2", "1"], "argument --scale-range: MIN 2.0 > MAX 1.0"),
    (["--train-size", "3", "--batch-size", "4"], "argument --train-size: 3 images make no batch"),
], ids=["scale-negative", "scale-huge", "scale-reversed", "train-size-below-batch"])
def test_flag_combinations_are_checked_at_parse_time(capsys, argv, message):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_parse_error_is_one_line_naming_the_flag():
    r = cli("train", "--width", "0")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == ["python -m minideeplab.train: error: argument --width: must "
                                     "be > 0, got 0 (see --help)"]
    r = cli("evaluate", "--checkpoint", "x.npz", "--scales", "0.5", "1")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "argument --scales: only used with --multi-scale" in r.stderr


def test_stop_after_at_or_before_the_checkpoint_is_refused(run):
    with pytest.raises(SystemExit, match="--stop-after 3: the checkpoint is already at "
                                         "iteration 4"):
        train.main(TINY + ["--iters", "4", "--out", str(run), "--resume",
                           str(run / "checkpoint.npz"), "--stop-after", "3"])


def test_evaluate_refuses_a_class_count_mismatch(run, tmp_path):
    make_tree(tmp_path / "VOC2012")
    with pytest.raises(SystemExit, match="predicts 6 classes but --dataset voc has 21"):
        evaluate.main(["--checkpoint", str(run / "checkpoint.npz"), "--dataset", "voc",
                       "--data-root", str(tmp_path / "VOC2012"), "--device", "cpu"])


def test_evaluate_on_voc_needs_its_folder(run):
    with pytest.raises(SystemExit, match="--dataset voc needs --data-root"):
        evaluate.main(["--checkpoint", str(run / "checkpoint.npz"), "--dataset", "voc"])


def test_evaluate_refuses_non_finite_weights(run, tmp_path):
    with np.load(run / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["model/logits.weight"] = arrays["model/logits.weight"] * np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(SystemExit, match=r"nan.npz cannot be used: 1 arrays hold NaN or inf "
                                         r"\(logits.weight\)"):
        evaluate.main(["--checkpoint", str(tmp_path / "nan.npz"), "--device", "cpu"])


@pytest.mark.parametrize("changed, message", [
    (["--batch-size", "4"], "started with --batch-size 2; this command has --batch-size 4"),
    (["--crop", "49"], "started with --crop 33; this command has --crop 49"),
    (["--lr", "0.1", "--iters", "8"], "started with --lr 0.3, --iters 4; this command has "
                                      "--lr 0.1, --iters 8"),
    (["--width", "0.25"], "model differs in width (0.125 there, 0.25 here)"),
    (["--no-decoder", "--output-stride", "16"],
     "model differs in decoder (True there, False here), output_stride (8 there, 16 here)"),
], ids=["batch-size", "crop", "lr-and-iters", "width", "decoder-and-output-stride"])
def test_resume_refuses_changed_settings_and_names_them(run, changed, message):
    before = digest(run / "checkpoint.npz")
    with pytest.raises(SystemExit, match=re.escape(message)):  # a repeated flag's last counts
        train.main(TINY + ["--iters", "4"] + changed + ["--out", str(run), "--resume",
                                                         str(run / "checkpoint.npz")])
    assert digest(run / "checkpoint.npz") == before


# -- one line where a traceback was ---------------------------------------------------------------
def rewrite(src, dst, change):
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(dst, **arrays)


CORRUPT = {
    "empty": lambda src, dst: dst.write_bytes(b""),
    "truncated": lambda src, dst: dst.write_bytes(src.read_bytes()[:5000]),
    "byte-flipped": lambda src, dst: dst.write_bytes(
        (lambda b: b[:3000] + bytes([b[3000] ^ 0xFF]) + b[3001:])(src.read_bytes())),
    "not-an-archive": lambda src, dst: dst.write_text("hello"),
    "no-meta": lambda src, dst: rewrite(src, dst, lambda a: a.pop("meta")),
    "meta-not-JSON": lambda src, dst: rewrite(src, dst, lambda a: a.update(meta=np.array("{x"))),
    "meta-incomplete": lambda src, dst: rewrite(src, dst, lambda a: a.update(
        meta=np.array(json.dumps({"iteration": 2})))),
    "no-parameters": lambda src, dst: rewrite(src, dst, lambda a: [
        a.pop(k) for k in list(a) if k.startswith("model/")]),
    "no-optimizer-state": lambda src, dst: rewrite(src, dst, lambda a: [
        a.pop(k) for k in list(a) if k.startswith("optim/")]),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_every_unreadable_checkpoint_gives_one_line(run, tmp_path, kind):
    bad = tmp_path / "bad.npz"
    CORRUPT[kind](run / "checkpoint.npz", bad)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"^--resume: cannot read checkpoint {bad}: "):
        train.main(TINY + ["--iters", "6", "--out", str(out), "--resume", str(bad)])
    if kind != "no-optimizer-state":  # evaluate needs only the model
        with pytest.raises(SystemExit, match=f"^cannot read checkpoint {bad}: "):
            evaluate.main(["--checkpoint", str(bad), "--device", "cpu"])


def with_meta(src, dst, change):
    """``src`` rewritten to ``dst`` with ``change(meta)`` applied to its meta."""
    def edit(arrays):
        meta = json.loads(str(arrays["meta"]))
        change(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    rewrite(src, dst, edit)


@pytest.mark.parametrize("version", [None, 1, MODEL_VERSION + 1])
def test_a_checkpoint_of_another_model_version_is_refused(run, tmp_path, version):
    """Issue 16: the network before the released one (model version 1, whose checkpoints record
    no version: the earlier code wrote none) has the same parameter names and shapes; its
    checkpoints would load and compute another network. evaluate, predict, --resume and
    --init-from refuse them, and a newer version's, in one line saying what to do."""
    old = tmp_path / "old.npz"
    with_meta(run / "checkpoint.npz", old, lambda meta: meta.pop("model_version") if version
              is None else meta.update(model_version=version))
    seen = 1 if version is None else version
    why = (f"checkpoint {re.escape(str(old))} is for model version {seen}, this code builds "
           f"version {MODEL_VERSION}" + (r" \(the released network: .*\), so its parameters "
                                         "would compute another network; retrain it" if seen == 1
                                         else "; read it with the minideeplab that wrote it"))
    assert load_checkpoint(str(run / "checkpoint.npz"))[2]["model_version"] == MODEL_VERSION
    with pytest.raises(SystemExit, match=f"^{why}"):
        evaluate.main(["--checkpoint", str(old), "--device", "cpu"])
    with pytest.raises(SystemExit, match=f"^{why}"):
        predict.main([str(tmp_path / "any.png"), "--checkpoint", str(old), "--out",
                      str(tmp_path / "p"), "--device", "cpu"])
    for flag in ("--resume", "--init-from"):
        out = tmp_path / flag
        with pytest.raises(SystemExit, match=f"^{flag}: {why}"):
            train.main(TINY + ["--iters", "6", "--out", str(out), flag, str(old)])
