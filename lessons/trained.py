"""The trained networks the lessons share: ``python -m minideeplab.train``'s default preset
(DeepLabv3+, 2000 iterations on the shapes), and the same run with ``--no-decoder`` (DeepLabv3).

Lessons 05-08 and 11 need trained weights (random ones show no structure) and lesson 06 compares
the two networks at equal training. Each run is trained once, by the first lesson that needs it,
into ``lessons/runs/<name>/``; later lessons (and reruns) load it. Missing runs are trained side
by side, one process and one core each: about 6 minutes on 2 CPU cores, 1 on a GPU. A run that
was interrupted continues from its checkpoint (the result is the same as not stopping).
"""
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

from minideeplab import device as devices
from minideeplab.experiment import load_model

RUNS_DIR = Path(__file__).resolve().parent / "runs"
# The default preset, with and without the decoder: nothing else differs.
FLAGS = {"deeplabv3plus": [], "deeplabv3": ["--no-decoder"]}


def _done(out):
    return (out / "metrics.json").exists()


def _command(name, out, device):
    ckpt = out / "checkpoint.npz"
    again = ["--resume", str(ckpt)] if ckpt.exists() else []  # an interrupted run continues
    return [sys.executable, "-m", "minideeplab.train", "--device", device, "--out", str(out),
            *FLAGS[name], *again]


def ensure(names=tuple(FLAGS), device=None):
    """Train the runs in ``names`` that are not finished yet, side by side; returns their
    folders (name -> Path). SystemExit with the log's last lines if one fails."""
    RUNS_DIR.mkdir(exist_ok=True)
    # One caller at a time (two lessons open at once): the second waits, then finds them trained.
    with open(RUNS_DIR / "trained.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        device = device or ("cuda" if devices.gpu_available() else "cpu")
        outs = {name: RUNS_DIR / name for name in names}
        todo = [name for name in names if not _done(outs[name])]
        if todo:
            print(f"training {', '.join(todo)} once ({device}, default preset: a few minutes); "
                  "every later lesson loads the result. Progress: lessons/runs/<name>/train.log")
            started, procs = time.perf_counter(), {}
            for name in todo:
                outs[name].mkdir(parents=True, exist_ok=True)
                with open(outs[name] / "train.log", "w") as log:  # the child keeps its copy
                    procs[name] = subprocess.Popen(_command(name, outs[name], device),
                                                   stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=RUNS_DIR.parent)
            for name, proc in procs.items():
                if proc.wait() != 0:
                    tail = (outs[name] / "train.log").read_text().replace("\r", "\n").splitlines()
                    raise SystemExit(f"training {name} failed (exit {proc.returncode}):\n"
                                     + "\n".join(tail[-5:]))
            print(f"trained in {time.perf_counter() - started:.0f} s")
    return outs


def metrics(name):
    """The run's metrics.json (val mIoU, per-class IoU, seconds, config), training the runs
    first if needed (all of them: side by side they take no longer than one)."""
    return json.loads((ensure()[name] / "metrics.json").read_text())


def model(name, device, output_stride=None):
    """The run's trained model on ``device``, in eval mode, at ``output_stride`` (default: the
    training one, 8), training the runs first if needed."""
    return load_model(str(ensure()[name] / "checkpoint.npz"), device, output_stride)[0]
