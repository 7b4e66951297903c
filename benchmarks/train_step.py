"""Seconds per DeepLabv3+ training step (forward, loss, backward, SGD) and peak memory, ours and,
when torch is importable, the same network in PyTorch in the same process (issues 7 and 9).

Presets: ``default`` is ``python -m minideeplab.train``'s (its PRESET, imported, so it follows
changes: small aligned Xception at the preset's crop and batch); ``full`` is the paper's
Xception-65 at 513x513, 21 classes (GPU only; ``--batch max`` finds the largest batch that fits).
PyTorch gets a module-for-module mirror (benchmarks/torch_deeplab.py) with our initial weights;
both first run two steps with dropout off and print their losses, which must match, then time
``--steps`` steps with dropout on (median, after warm-up; the GPU synchronised after each step).
``--threads N``: ours as ``train.py --threads N`` (the NumPy path on N threads, BLAS on one),
PyTorch on N threads (``--blas-threads N``: ours with BLAS on N threads instead); FP32 with TF32
off.

Peak memory: cpu and emu, the largest total of NumPy arrays allocated during one step
(tracemalloc); cuda, CuPy's memory pool after one step from an emptied pool (what it reserved)
against torch.cuda.max_memory_reserved. On cuda and emu one step's kernel launches are counted
(common.LaunchLog): launches per step, host time spent launching, and (cuda) the GPU time of
those kernels. ``--profile``: cProfile of one of our steps, top functions by own time.

    python benchmarks/train_step.py --device cpu                  # default preset
    python benchmarks/train_step.py --device cuda --preset full --batch 8
    python benchmarks/train_step.py --device cuda --preset full --batch max
    python benchmarks/train_step.py --device emu --quick          # a tiny model: the harness
"""
import argparse
import cProfile
import importlib.util
import os
import pstats
import resource
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab.functional as F  # noqa: E402
from minideeplab.data.shapes import ShapesDataset  # noqa: E402
from minideeplab.device import get_device, gpu_available  # noqa: E402
from minideeplab.experiment import no_weight_decay  # noqa: E402
from minideeplab.models import deeplabv3plus  # noqa: E402
from minideeplab.optim import SGD  # noqa: E402
from minideeplab.tensor import Tensor  # noqa: E402
from minideeplab.train import PRESET  # noqa: E402
from benchmarks.common import (  # noqa: E402
    LaunchLog, blas_threads, default_json_path, device_info, set_threads, synchronize,
    write_json)

MODEL_KEYS = ("backbone", "width", "middle_blocks", "aspp_channels", "low_level_channels",
              "separable_aspp", "bn_momentum")
PRESETS = {
    "default": dict({k: PRESET[k] for k in MODEL_KEYS}, num_classes=ShapesDataset.num_classes,
                    output_stride=PRESET.get("output_stride", 16), crop=PRESET["crop"],
                    batch=PRESET["batch_size"]),
    "full": dict(backbone="xception65", width=1.0, middle_blocks=16, aspp_channels=256,
                 low_level_channels=48, bn_momentum=0.0003, num_classes=21, output_stride=16,
                 crop=513, batch=8),
    # Every op of the step, tiny: about a second a step on emu, whose time goes to the
    # reductions' barriers (one fiber switch per thread each).
    "quick": dict(backbone="xception65", width=0.03, middle_blocks=1, aspp_channels=8,
                  low_level_channels=4, bn_momentum=0.05, num_classes=6, output_stride=16,
                  crop=33, batch=2),
}
LR, MOMENTUM, WEIGHT_DECAY = PRESET["lr"], 0.9, PRESET["weight_decay"]


def make_batch(cfg, batch, seed=0):
    """Normalised-looking images and labels with a 5% ignore band (step time does not depend on
    what the pixels show)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, cfg["crop"], cfg["crop"]), dtype=np.float32)
    labels = rng.integers(0, cfg["num_classes"], (batch, cfg["crop"], cfg["crop"]))
    labels[rng.random(labels.shape) < 0.05] = 255
    return images, labels


def build(cfg, device):
    model = deeplabv3plus(**{k: cfg[k] for k in MODEL_KEYS if k in cfg},
                          num_classes=cfg["num_classes"], output_stride=cfg["output_stride"],
                          seed=0).to(device)
    # Weight decay where training puts it (the official rule: no depthwise weights, BN or biases).
    return model, SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                      no_decay=no_weight_decay(model))


# Where a step reads its loss on the host: "before" the backward, as train.py's loop has done (a
# device-to-host synchronisation inside the step), or "after" the update.
LOSS_READ = "after"


def forward_loss(model, images, labels, device, read):
    """The batch moved to ``device``, the forward and the loss -> (loss Tensor, its value when
    ``read``, else None). The labels go in as NumPy: checked on the host, before they move."""
    logits = model(Tensor(images, device=device))
    loss = F.softmax_cross_entropy(logits, labels)
    return loss, (float(loss.item()) if read else None)


def our_step(model, opt, images, labels, device):
    """One iteration of train.py's loop (the lr schedule aside), -> loss."""
    loss, value = forward_loss(model, images, labels, device, LOSS_READ == "before")
    opt.zero_grad()
    loss.backward()
    opt.step()
    return value if LOSS_READ == "before" else float(loss.item())


def torch_step(model, opt, images, labels, device):
    import torch
    logits = model(torch.from_numpy(images).to(device))
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels).to(device),
                                             ignore_index=255)
    value = float(loss.item())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return value


def median_step_s(step, device, warmup, steps):
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_memory(step, device):
    """Bytes: see the module docstring."""
    if device == "cuda":
        import cupy
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        step()
        return pool.total_bytes()
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def torch_peak_memory(step, device):
    import torch
    if device != "cuda":
        return None  # PyTorch's CPU allocator reports to nothing tracemalloc sees
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step()
    return torch.cuda.max_memory_reserved()


def launches(step, device):
    """Our kernel launches in one step: count, per kernel, host ms launching, GPU ms (cuda)."""
    dev = get_device(device)
    with LaunchLog(dev, keep_args=False) as log:
        step()
    synchronize(device)
    out = dict(launches=len(log.calls), host_ms=1e3 * sum(c.host_s for c in log.calls),
               per_kernel={})
    for c in log.calls:
        out["per_kernel"][c.kernel] = out["per_kernel"].get(c.kernel, 0) + 1
    if device == "cuda":
        with LaunchLog(dev, keep_args=False, gpu_events=True) as timed:
            step()
        out["gpu_ms"] = timed.gpu_ms()
    return out


def all_gpu_kernels(step):
    """Every kernel one step runs on the GPU, CuPy's element-wise and cuBLAS ones included: the
    PyTorch profiler's CUPTI trace sees the whole process. -> (count, GPU ms), or None when the
    trace is unavailable (no CUPTI): a diagnostic, not a result to fail the run over."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            synchronize("cuda")
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.startswith(("Memcpy", "Memset"))]
        return len(kernels), sum(e.time_range.elapsed_us() for e in kernels) / 1e3
    except Exception as e:  # noqa: BLE001
        print(f"         (torch.profiler could not trace the GPU: {e})")
        return None


def release(device):
    """Give back the GPU memory CuPy's pool and PyTorch's allocator cache: the two libraries
    share one GPU here, and each must find the memory the other no longer uses."""
    if device != "cuda":
        return
    import cupy
    cupy.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:
        sys.modules["torch"].cuda.empty_cache()


def largest_batch(try_batch, start=8, step=4, limit=256):
    """The largest batch (start, start + step, ...) whose training step runs without running out
    of device memory."""
    best, batch = None, start
    while batch <= limit:
        try:
            try_batch(batch)
        except Exception as e:  # CuPy's and PyTorch's OutOfMemoryError share no base class
            if "out of memory" not in str(e).lower() and "OutOfMemory" not in type(e).__name__:
                raise
            break
        best, batch = batch, batch + step
    return best


def run(args):
    cfg = dict(PRESETS["quick" if args.quick else args.preset])
    cfg.update({k: v for k, v in (("crop", args.crop), ("output_stride", args.output_stride))
                if v is not None})
    device = args.device
    if args.preset == "full" and device != "cuda" and not args.quick:
        raise SystemExit("--preset full is for a GPU (Xception-65 at 513x513 takes tens of GB)")
    if args.threads:
        set_threads(args.threads)
    if args.blas_threads:  # the other way to use the cores, for comparison
        blas_threads(args.blas_threads)
    info = device_info(device)
    use_torch = not args.no_torch and device != "emu" and importlib.util.find_spec("torch")
    torch_dev = "cuda" if device == "cuda" else "cpu"
    if use_torch:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            use_torch = False
        else:
            torch.backends.cudnn.allow_tf32 = False  # FP32 against FP32
            torch.backends.cuda.matmul.allow_tf32 = False
            if device == "cpu":
                torch.set_num_threads(args.threads or args.blas_threads or os.cpu_count())
    batch = args.batch if args.batch not in (None, "max") else cfg["batch"]
    result = dict(preset="quick" if args.quick else args.preset, config=cfg, batch=int(batch),
                  device=device)

    if args.batch == "max":  # before anything else holds device memory
        def fits(b):
            try:
                our_step(*build(cfg, device), *make_batch(cfg, b), device)
            finally:
                release(device)
        result["max_batch"] = result["batch"] = batch = largest_batch(fits)
        release(device)
        print(f"largest batch that fits: {batch}")
    # At --batch max each library runs at its own largest batch, one after the other.
    same_batch_torch = use_torch and args.batch != "max"

    images, labels = make_batch(cfg, batch)
    model, opt = build(cfg, device)
    if same_batch_torch:
        from benchmarks import torch_deeplab
        tmodel = torch_deeplab.DeepLab(model).to(torch_dev).train()
        topt = torch_deeplab.sgd(tmodel, LR, MOMENTUM, WEIGHT_DECAY)
        tstep = lambda: torch_step(tmodel, topt, images, labels, torch_dev)  # noqa: E731
    step = lambda: our_step(model, opt, images, labels, device)  # noqa: E731

    # The check: two steps from the same weights with dropout off, losses side by side.
    p = model.aspp.dropout.p
    model.aspp.dropout.p = 0.0
    ours = [step() for _ in range(2)]
    model.aspp.dropout.p = p
    result["first_losses"] = dict(ours=ours)
    print(f"{info['name']} ({device}), preset {result['preset']}, batch {batch}, crop "
          f"{cfg['crop']}, output stride {cfg['output_stride']}, lr {LR}, threads "
          f"{info['threads']} (BLAS {info['blas_threads']}), load average "
          f"{os.getloadavg()[0]:.2f}")
    if same_batch_torch:
        release(device)
        tmodel.aspp.dropout.p = 0.0
        theirs = [tstep() for _ in range(2)]
        tmodel.aspp.dropout.p = p
        result["first_losses"]["torch"] = theirs
        print(f"losses of steps 1, 2 (dropout off): ours {ours[0]:.6f} {ours[1]:.6f}, "
              f"PyTorch {theirs[0]:.6f} {theirs[1]:.6f}")
    else:
        print(f"losses of steps 1, 2 (dropout off): ours {ours[0]:.6f} {ours[1]:.6f}")

    # Warm-up beyond the two checked steps: PyTorch's oneDNN builds its primitives over the first
    # two or three steps on the CPU, CuPy compiles kernels on first use.
    warmup, steps = (0, 1) if args.quick else (2, args.steps)
    release(device)
    s = result["ours_s"] = median_step_s(step, device, warmup, steps)
    m = result["ours_peak_bytes"] = peak_memory(step, device)
    print(f"ours:    {s:8.3f} s/step {batch / s:8.1f} images/s   peak memory {m / 2**20:8.1f} MiB")
    if device != "cpu":
        result["launches"] = lc = launches(step, device)
        gpu = f", their kernels {lc['gpu_ms']:.1f} ms on the GPU" if "gpu_ms" in lc else ""
        print(f"         {lc['launches']} kernel launches per step (ours, CuPy's own element-wise "
              f"and cuBLAS calls come on top): {lc['host_ms']:.1f} ms host time in launch{gpu}")
        if device == "cuda" and use_torch and (traced := all_gpu_kernels(step)):
            lc["all_kernels"], lc["all_kernels_gpu_ms"] = traced
            print(f"         all GPU kernels of the step (CUPTI): {traced[0]}, {traced[1]:.1f} ms "
                  f"busy of a {1e3 * s:.1f} ms step: the rest is host time the GPU waits for")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(step)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    if use_torch and not same_batch_torch:  # --batch max: PyTorch's own largest batch
        from benchmarks import torch_deeplab
        del model, opt
        release(device)

        def tbuild():
            m = torch_deeplab.DeepLab(build(cfg, "cpu")[0]).to(torch_dev).train()
            return m, torch_deeplab.sgd(m, LR, MOMENTUM, WEIGHT_DECAY)

        def tfits(b):
            try:
                torch_step(*tbuild(), *make_batch(cfg, b), torch_dev)
            finally:
                release(device)
        result["torch_max_batch"] = tbatch = largest_batch(tfits)
        release(device)
        tmodel, topt = tbuild()
        timages, tlabels = make_batch(cfg, tbatch)
        tstep = lambda: torch_step(tmodel, topt, timages, tlabels, torch_dev)  # noqa: E731
    else:
        tbatch = batch
    if use_torch:
        release(device)
        t = result["torch_s"] = median_step_s(tstep, torch_dev, warmup, steps)
        tm = result["torch_peak_bytes"] = torch_peak_memory(tstep, torch_dev)
        mem = f"peak memory {tm / 2**20:8.1f} MiB" if tm else "(CPU peak memory not measured)"
        result["images_per_s_ratio"] = (batch / s) / (tbatch / t)
        print(f"PyTorch: {t:8.3f} s/step {tbatch / t:8.1f} images/s   {mem}   at batch {tbatch}; "
              f"ours/PyTorch images/s {result['images_per_s_ratio']:.2f}x")
        if tbatch == batch:
            result["ratio"] = s / t
            print(f"         ours/PyTorch step time {s / t:.2f}x")
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_average"] = os.getloadavg()
    return info, result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "emu"],
                   default="cuda" if gpu_available() else "cpu")
    p.add_argument("--preset", choices=["default", "full"], default="default")
    p.add_argument("--batch", type=lambda v: v if v == "max" else int(v), default=None,
                   help="batch size (default: the preset's); 'max': the largest that fits (cuda)")
    p.add_argument("--crop", type=int, help="crop size (default: the preset's)")
    p.add_argument("--output-stride", type=int, choices=[8, 16, 32],
                   help="output stride (default: the preset's)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    p.add_argument("--threads", type=int, help="CPU threads, ours (BLAS on one) and PyTorch's")
    p.add_argument("--blas-threads", type=int, help="instead: the NumPy path on one thread, BLAS "
                   "on this many (and PyTorch)")
    p.add_argument("--quick", action="store_true", help="a tiny model, one timed step (seconds)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="N",
                   help="cProfile one of our steps: the top N functions by own time")
    p.add_argument("--json", metavar="PATH", nargs="?", const="",
                   help="write the figures to PATH (default benchmarks/results/<device>-<date>"
                        "-train_step.json)")
    args = p.parse_args(argv)
    if args.batch == "max" and args.device != "cuda":
        p.error("--batch max needs --device cuda")
    if args.threads and args.blas_threads:
        p.error("--threads and --blas-threads are two ways to use the cores: give one")
    info, result = run(args)
    if args.json is not None:
        path = args.json or default_json_path(info).replace(".json", "-train_step.json")
        write_json(path, info, train_step=result)
    return result


if __name__ == "__main__":
    main()
