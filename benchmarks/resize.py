"""Bilinear resize and global average pooling at DeepLab shapes (batch 8 at 513x513, ARCHITECTURE.md
s. 7 and 11), align_corners=True: the decoder's x4 upsampling of 256 channels 33x33 -> 129x129,
the final x4 of 21 logits 129x129 -> 513x513, ASPP image pooling of 2048 channels at 33x33 and its
1x1 -> 33x33 upsampling of 256 channels; forward and backward.

The NumPy path is timed on the CPU (perf_counter medians) after a check of image 0 against SciPy's
order-1 interpolation; on a GPU the kernels are first checked against the NumPy path, then timed
with CUDA events. GB/s counts the bytes that must move: each input read once, each output written
once. When torch is importable the same cases then run in PyTorch.

    python benchmarks/resize.py            # batch 8
    python benchmarks/resize.py --quick    # batch 1, 3 repeats: under a minute on 2 CPU cores
"""
import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab as mdl  # noqa: E402
import minideeplab.functional as F  # noqa: E402
from benchmarks.common import cpu_ms, gpu_ms, nbytes, report, run_op_benchmark  # noqa: E402

# name -> (C, H, W, output size; None = global average pooling)
CASES = {"resize 256ch 33x33 -> 129x129": (256, 33, 33, (129, 129)),
         "resize 21ch 129x129 -> 513x513": (21, 129, 129, (513, 513)),
         "resize 256ch 1x1 -> 33x33": (256, 1, 1, (33, 33)),
         "global_avg_pool 2048ch 33x33": (2048, 33, 33, None)}


def op(size):
    return F.global_avg_pool if size is None else lambda x: F.resize_bilinear(x, size)


def reference_image0(x, size):
    """float64 image 0, channels 0 and 1: SciPy's order-1 interpolation, or the mean."""
    x0 = x[0, :2].astype(np.float64)
    if size is None:
        return x0.mean(axis=(1, 2))[:, None, None]
    H, W = x0.shape[1:]
    grid = np.stack(np.meshgrid(np.linspace(0, H - 1, size[0]), np.linspace(0, W - 1, size[1]),
                                indexing="ij"))
    return np.array([ndimage.map_coordinates(p, grid, order=1) for p in x0])


def run_case(name, batch, repeat, device):
    C, H, W, size = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W), dtype=np.float32)
    X = mdl.Tensor(x, requires_grad=True, device=device)
    Y = op(size)(X)
    gy = rng.standard_normal(Y.shape, dtype=np.float32)
    GY = mdl.Tensor(gy, device=device)

    def backward():
        X.grad = None
        Y.backward(GY, retain_graph=True)

    backward()
    if device == "cpu":
        np.testing.assert_allclose(Y.data[0, :2], reference_image0(x, size), rtol=1e-4, atol=1e-5)
        time_fn = lambda f: cpu_ms(f, repeat)  # noqa: E731
    else:  # the kernels against the NumPy path
        Xc = mdl.Tensor(x, requires_grad=True)
        Yc = op(size)(Xc)
        Yc.backward(gy)
        for got, want in ((Y, Yc.data), (X.grad, Xc.grad)):
            np.testing.assert_allclose(mdl.Tensor(got).numpy(), want, rtol=1e-4, atol=1e-5)
        time_fn = lambda f: gpu_ms(f, repeat=4 * repeat)  # noqa: E731

    with mdl.no_grad():
        ms = [time_fn(lambda: op(size)(X)), time_fn(backward)]
    moved = nbytes(x.shape, gy.shape)
    # 4 taps (3 lerps = 6 flops) per resized output; 1 add per pooled input.
    flops = 6 * gy.size if size else x.size
    rows = [(f"{name} {what}", m, moved, flops) for what, m in zip(("fwd", "bwd"), ms)]
    for row in rows:
        report(*row)
    return rows, lambda: torch_times(x, gy, size, device, time_fn)


def torch_times(x, gy, size, device, time_fn):
    """PyTorch's forward and backward times for the same case (only when torch is importable)."""
    import torch
    fn = torch.nn.functional
    dev = "cuda" if device == "cuda" else "cpu"
    X, GY = torch.tensor(x, device=dev, requires_grad=True), torch.tensor(gy, device=dev)
    f = ((lambda: fn.adaptive_avg_pool2d(X, 1)) if size is None else
         (lambda: fn.interpolate(X, size=size, mode="bilinear", align_corners=True)))
    Y = f()

    def backward():
        X.grad = None
        Y.backward(GY, retain_graph=True)

    with torch.no_grad():
        fwd = time_fn(f)
    return fwd, time_fn(backward)


if __name__ == "__main__":
    run_op_benchmark(__doc__, CASES, run_case)
