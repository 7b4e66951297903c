"""Convolution benchmark at the paper's shapes (batch 8 at 513x513, ARCHITECTURE.md s. 11).

Depthwise 3x3 over 728 channels at 33x33 (output stride 16) with rates 1, 6, 12, 18 (the entry of
the separable ASPP), and the 1x1 728->728 and 256->256 convs at 129x129, forward and backward
(x and w gradients). The NumPy path is timed on the CPU (perf_counter medians) after a check against
an independent float64 reference on one image; on a GPU the kernels are first checked against the
NumPy path, then timed with CUDA events. When torch is importable the same cases then run in
PyTorch for comparison.

    python benchmarks/conv.py            # batch 8
    python benchmarks/conv.py --quick    # batch 1, fewer repeats: under a minute on 2 CPU cores
"""
import argparse
import importlib.util
import os
import sys

import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab as mdl  # noqa: E402
import minideeplab.functional as F  # noqa: E402
from benchmarks.common import conv_flops, cpu_ms, gpu_available, gpu_ms, nbytes, report  # noqa: E402

# name -> (C, H, W, Cout, k, rate, groups) at batch 8, 513x513 crop
CASES = {f"depthwise 3x3 728ch 33x33 rate {r}": (728, 33, 33, 728, 3, r, 728)
         for r in (1, 6, 12, 18)}
CASES["pointwise 728->728 129x129"] = (728, 129, 129, 728, 1, 1, 1)
CASES["pointwise 256->256 129x129"] = (256, 129, 129, 256, 1, 1, 1)


def reference_image0(x, w, rate, groups, channels):
    """float64 output of image 0 for a few output channels, by SciPy / einsum (not conv.py)."""
    x0, w = x[0].astype(np.float64), w.astype(np.float64)
    if groups == 1:  # 1x1
        return np.einsum("oc,chw->ohw", w[channels, :, 0, 0], x0)
    out = []
    for c in channels:
        k = np.zeros((2 * rate + 1,) * 2)
        k[::rate, ::rate] = w[c, 0]
        out.append(scipy.signal.correlate(np.pad(x0[c], rate), k, mode="valid"))
    return np.array(out)


def run_case(name, batch, repeat, device):
    C, H, W, Cout, k, rate, groups = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
    w = rng.standard_normal((Cout, C // groups, k, k), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(C // groups * k * k))
    gy = rng.standard_normal((batch, Cout, H, W), dtype=np.float32)

    def conv(X, Wt):
        return F.conv2d(X, Wt, padding=rate * (k - 1) // 2, dilation=rate, groups=groups)

    X, Wt = mdl.Tensor(x, requires_grad=True, device=device), mdl.Tensor(w, requires_grad=True,
                                                                          device=device)
    Y = conv(X, Wt)
    GY = mdl.Tensor(gy, device=device)

    def backward():
        X.grad = Wt.grad = None
        Y.backward(GY, retain_graph=True)

    backward()
    if device == "cpu":
        ch = [0, Cout // 2, Cout - 1]
        np.testing.assert_allclose(Y.numpy()[0, ch], reference_image0(x, w, rate, groups, ch),
                                   rtol=1e-3, atol=1e-3)
        time_fn = lambda f: cpu_ms(f, repeat)  # noqa: E731
    else:  # the kernels against the NumPy path
        Xc, Wc = mdl.Tensor(x, requires_grad=True), mdl.Tensor(w, requires_grad=True)
        Yc = conv(Xc, Wc)
        Yc.backward(gy)
        for got, want in ((Y, Yc.data), (X.grad, Xc.grad), (Wt.grad, Wc.grad)):
            np.testing.assert_allclose(mdl.Tensor(got).numpy(), want, rtol=1e-3, atol=1e-3)
        time_fn = lambda f: gpu_ms(f, repeat=4 * repeat)  # noqa: E731

    flops = conv_flops(batch, C, Cout, H, W, k, k, groups)
    fwd_bytes = nbytes(x.shape, w.shape, gy.shape)
    bwd_bytes = nbytes(gy.shape, x.shape, w.shape, x.shape, w.shape)  # gy, x, w in; gx, gw out
    report(f"{name} fwd", time_fn(lambda: conv(X, Wt)), fwd_bytes, flops)
    report(f"{name} bwd", time_fn(backward), bwd_bytes, 2 * flops)
    return x, w, gy, rate, groups, fwd_bytes, bwd_bytes, flops


def torch_case(name, x, w, gy, rate, groups, fwd_bytes, bwd_bytes, flops, device, repeat):
    """The same case in PyTorch (only when torch is importable; never part of the package)."""
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    time_fn = (lambda f: gpu_ms(f, repeat=4 * repeat)) if dev == "cuda" else (  # noqa: E731
        lambda f: cpu_ms(f, repeat))
    X = torch.tensor(x, device=dev, requires_grad=True)
    Wt = torch.tensor(w, device=dev, requires_grad=True)
    GY = torch.tensor(gy, device=dev)
    conv = lambda: torch.nn.functional.conv2d(  # noqa: E731
        X, Wt, padding=rate * (w.shape[2] - 1) // 2, dilation=rate, groups=groups)
    Y = conv()

    def backward():
        X.grad = Wt.grad = None
        Y.backward(GY, retain_graph=True)

    with torch.no_grad():
        report(f"torch {name} fwd", time_fn(conv), fwd_bytes, flops)
    report(f"torch {name} bwd", time_fn(backward), bwd_bytes, 2 * flops)


def torch_sees_gpu():
    import torch
    return torch.cuda.is_available()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 3 repeats (under a minute)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8, --quick 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (median)")
    p.add_argument("--cases", default="", help="only cases whose name contains this text")
    args = p.parse_args()
    batch = args.batch or (1 if args.quick else 8)
    repeat = args.repeat or (3 if args.quick else 5)
    devices = ["cpu"] + (["cuda"] if gpu_available() else [])
    for device in devices:
        print(f"-- {device}, batch {batch}, float32 (median of {repeat})")
        done = {name: run_case(name, batch, repeat, device) for name in CASES if args.cases in name}
        # PyTorch after all of ours: on 2 cores, BLAS and OpenMP threads of the two libraries
        # would otherwise spin against each other.
        if importlib.util.find_spec("torch") and (device == "cpu" or torch_sees_gpu()):
            for name, case in done.items():
                torch_case(name, *case, device, repeat)


if __name__ == "__main__":
    main()
