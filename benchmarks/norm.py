"""Batch-norm benchmark at DeepLab shapes (batch 8 at 513x513, ARCHITECTURE.md s. 11): 256
channels at 129x129 (decoder, output stride 4) and 728 at 33x33 (Xception middle flow, output
stride 16).

Training forward (statistics, running-stat update, normalisation), backward (dgamma, dbeta, dx)
and eval forward. The NumPy path is timed on the CPU (perf_counter medians) after a check against
a float64 closed form; on a GPU the kernels are first checked against the NumPy path, then timed
with CUDA events. GB/s counts the bytes that must move: forward reads x and writes y, backward
reads x and gy and writes dx. When torch is importable the same cases then run in PyTorch.

    python benchmarks/norm.py            # batch 8
    python benchmarks/norm.py --quick    # batch 1, 3 repeats: under a minute on 2 CPU cores
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab as mdl  # noqa: E402
import minideeplab.functional as F  # noqa: E402
from benchmarks.common import cpu_ms, gpu_ms, nbytes, report, run_op_benchmark  # noqa: E402

WHAT = ("train fwd", "bwd", "eval fwd")
CASES = {"batch_norm 256ch 129x129": (256, 129, 129), "batch_norm 728ch 33x33": (728, 33, 33)}


def run_case(name, batch, repeat, device):
    C, H, W = CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W), dtype=np.float32) * 2 + 1
    gy = rng.standard_normal(x.shape, dtype=np.float32)
    gamma, beta = rng.standard_normal(C, dtype=np.float32), rng.standard_normal(C, dtype=np.float32)
    dev = mdl.get_device(device)
    X, G, B = (mdl.Tensor(a, requires_grad=True, device=device) for a in (x, gamma, beta))
    rm, rv = dev.asarray(np.zeros(C, np.float32)), dev.asarray(np.ones(C, np.float32))
    train = lambda: F.batch_norm(X, G, B, rm, rv, True)  # noqa: E731
    evaluate = lambda: F.batch_norm(X, G, B, rm, rv, False)  # noqa: E731
    Y, GY = train(), mdl.Tensor(gy, device=device)

    def backward():
        X.grad = G.grad = B.grad = None
        Y.backward(GY, retain_graph=True)

    backward()
    if device == "cpu":
        x64 = x.astype(np.float64)
        mean, var = x64.mean(axis=(0, 2, 3), keepdims=True), x64.var(axis=(0, 2, 3), keepdims=True)
        xhat = (x64 - mean) / np.sqrt(var + 1e-5)
        g = gamma[None, :, None, None]
        dx = g / np.sqrt(var + 1e-5) * (gy - gy.mean(axis=(0, 2, 3), keepdims=True)
                                         - xhat * (gy * xhat).mean(axis=(0, 2, 3), keepdims=True))
        for got, want in ((Y.data, xhat * g + beta[None, :, None, None]), (X.grad, dx)):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        time_fn = lambda f: cpu_ms(f, repeat)  # noqa: E731
    else:  # the kernels against the NumPy path
        Xc, Gc, Bc = (mdl.Tensor(a, requires_grad=True) for a in (x, gamma, beta))
        Yc = F.batch_norm(Xc, Gc, Bc, np.zeros(C, np.float32), np.ones(C, np.float32), True)
        Yc.backward(gy)
        for got, want in ((Y, Yc.data), (X.grad, Xc.grad), (G.grad, Gc.grad), (B.grad, Bc.grad)):
            np.testing.assert_allclose(mdl.Tensor(got).numpy(), want, rtol=1e-3, atol=1e-3)
        time_fn = lambda f: gpu_ms(f, repeat=4 * repeat)  # noqa: E731

    with mdl.no_grad():
        ms = [time_fn(train), time_fn(backward), time_fn(evaluate)]
    moved = [nbytes(x.shape, x.shape), nbytes(x.shape, x.shape, x.shape), nbytes(x.shape, x.shape)]
    flops = [5 * x.size, 6 * x.size, 2 * x.size]  # counted per element: sums, products, scalings
    rows = [(f"{name} {what}", m, b, f) for what, m, b, f in zip(WHAT, ms, moved, flops)]
    for row in rows:
        report(*row)
    return rows, lambda: torch_times(x, gamma, beta, gy, device, time_fn)


def torch_times(x, gamma, beta, gy, device, time_fn):
    """PyTorch's times for the same three cases (only when torch is importable)."""
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    X, G, B = (torch.tensor(a, device=dev, requires_grad=True) for a in (x, gamma, beta))
    rm, rv = torch.zeros(len(gamma), device=dev), torch.ones(len(gamma), device=dev)
    bn = lambda training: torch.nn.functional.batch_norm(X, rm, rv, G, B, training)  # noqa: E731
    Y, GY = bn(True), torch.tensor(gy, device=dev)

    def backward():
        X.grad = G.grad = B.grad = None
        Y.backward(GY, retain_graph=True)

    with torch.no_grad():
        fwd, ev = time_fn(lambda: bn(True)), time_fn(lambda: bn(False))
    return fwd, time_fn(backward), ev


if __name__ == "__main__":
    run_op_benchmark(__doc__, CASES, run_case)
