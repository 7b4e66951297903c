"""The NumPy path's two algorithms for each kind of conv, side by side (functional/conv.py),
forward and backward (x and w gradients), at DeepLabv3+'s 3x3 convs on the CPU:
- dense: im2col and one GEMM (``Conv2d``), and one GEMM per tap over just its outputs on the
  image (``TapConv2d``); each case gives the share of im2col's multiply-adds on the image, which
  ``conv2d`` compares with ``TAPS_BELOW`` to pick one;
- depthwise: a multiply-add per tap over channels-last images (``DepthwiseConv2d``), and over the
  padded maps laid out flat (``FlatDepthwiseConv2d``), which ``conv2d`` picks for stride-1 maps at
  least ``FLAT_MIN_WIDTH`` wide.
When torch is importable, PyTorch's times on the same arrays follow. Both algorithms are first
checked against a float64 reference (einsum over the padded input) on image 0.

    python benchmarks/conv_algorithms.py --threads 1   # batch 4, the NumPy path and BLAS on 1
    python benchmarks/conv_algorithms.py --quick       # tiny cases: the harness
"""
import argparse
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab as mdl  # noqa: E402
from minideeplab.functional import conv  # noqa: E402
from benchmarks.common import (cpu_ms, default_json_path, device_info, set_threads,  # noqa: E402
                               write_json)

# name -> (C, size, Cout, rate, groups): 3x3 convs with "same" padding, where the models have them.
CASES = {
    "ASPP rate 6, 9x9 (crop 129, OS 16)": (512, 9, 64, 6, 1),
    "ASPP rate 6, 17x17 (crop 257, OS 16)": (512, 17, 64, 6, 1),
    "ASPP rate 12, 17x17 (crop 257, OS 16)": (512, 17, 64, 12, 1),
    "ASPP rate 6, 33x33 (crop 513, OS 16)": (512, 33, 64, 6, 1),
    "rate 3, 256 ch, 33x33": (256, 33, 64, 3, 1),
    "182 ch, 17x17": (182, 17, 182, 1, 1),
    "decoder 88->64, 17x17 (default preset)": (88, 17, 64, 1, 1),
    "decoder 88->64, 65x65 (crop 257, OS 16)": (88, 65, 64, 1, 1),
    "depthwise 16 ch, 129x129 (crop 257)": (16, 129, 16, 1, 16),
    "depthwise 32 ch, 129x129 (crop 257)": (32, 129, 32, 1, 32),
    "depthwise 64 ch, 65x65 (crop 257)": (64, 65, 64, 1, 64),
    "depthwise 32 ch, 33x33 (default preset)": (32, 33, 32, 1, 32),
    "depthwise 182 ch, 33x33 (crop 257)": (182, 33, 182, 1, 182),
    "depthwise 728 ch, 33x33 (crop 513)": (728, 33, 728, 1, 728),
    "depthwise 182 ch, 17x17 (crop 257)": (182, 17, 182, 1, 182),
    "depthwise 182 ch, 9x9 (default preset)": (182, 9, 182, 1, 182),
}
QUICK = {"tiny rate 3, 9x9": (8, 9, 4, 3, 1), "tiny 5x5": (4, 5, 4, 1, 1),
         "tiny depthwise 9x9": (4, 9, 4, 1, 4)}
ALGORITHMS = {"dense": (conv.Conv2d, conv.TapConv2d),
              "depthwise": (conv.DepthwiseConv2d, conv.FlatDepthwiseConv2d)}


def reference_image0(x, w, rate, groups):
    """float64 output of image 0, an einsum per tap over the zero-padded input (not conv.py)."""
    x0 = np.pad(x[0].astype(np.float64), ((0, 0), (rate, rate), (rate, rate)))
    size, product = x.shape[2], "oc,chw->ohw" if groups == 1 else "c,chw->chw"
    return sum(np.einsum(product, w[:, :, i, j].astype(np.float64).squeeze(),
                         x0[:, i * rate:i * rate + size, j * rate:j * rate + size])
               for i in range(3) for j in range(3))


def run_case(name, shape, batch, repeat):
    C, size, Cout, rate, groups = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, size, size), dtype=np.float32)
    w = rng.standard_normal((Cout, C // groups, 3, 3), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(9 * C // groups))
    gy = rng.standard_normal((batch, Cout, size, size), dtype=np.float32)
    g = conv._geometry(x.shape, w.shape, None, 1, rate, rate, groups)
    row = dict(case=name, on_image=conv._on_image(g, conv._taps(g)),
               picked=conv._op_class(g).__name__)
    reference = reference_image0(x, w, rate, groups)
    pair = ALGORITHMS["depthwise" if groups > 1 else "dense"]
    for algorithm in pair:
        row[algorithm.__name__] = time_algorithm(algorithm, g, x, w, gy, reference, repeat)
    print(f"{name:42s} {100 * row['on_image']:4.0f}% on the image, picks {row['picked']:19s} "
          + "  ".join(f"{a.__name__} fwd {row[a.__name__]['forward_ms']:7.2f} bwd "
                      f"{row[a.__name__]['backward_ms']:7.2f} ms" for a in pair))
    return row


def time_algorithm(algorithm, g, x, w, gy, reference, repeat):
    """Checked against ``reference`` on image 0, then timed: forward, and backward for x and w."""
    X, W = mdl.Tensor(x, requires_grad=True), mdl.Tensor(w, requires_grad=True)
    y = algorithm(g)(X, W)
    np.testing.assert_allclose(y.numpy()[0], reference, rtol=1e-3, atol=1e-3)
    return dict(forward_ms=cpu_ms(lambda: algorithm(g)(X, W), repeat),
                backward_ms=cpu_ms(lambda: y.creator.backward(gy), repeat))


def torch_case(row, shape, batch, repeat):
    """PyTorch's conv on the same shapes (only when torch is importable; never in the package)."""
    import torch
    C, size, Cout, rate, groups = shape
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((batch, C, size, size), dtype=np.float32),
                     requires_grad=True)
    W = torch.tensor(rng.standard_normal((Cout, C // groups, 3, 3), dtype=np.float32),
                     requires_grad=True)
    GY = torch.tensor(rng.standard_normal((batch, Cout, size, size), dtype=np.float32))
    fwd = lambda: torch.nn.functional.conv2d(X, W, padding=rate, dilation=rate,  # noqa: E731
                                             groups=groups)
    Y = fwd()

    def backward():
        X.grad = W.grad = None
        Y.backward(GY, retain_graph=True)

    with torch.no_grad():
        row["torch"] = dict(forward_ms=cpu_ms(fwd, repeat))
    row["torch"]["backward_ms"] = cpu_ms(backward, repeat)
    print(f"{row['case']:42s} PyTorch fwd {row['torch']['forward_ms']:7.2f} bwd "
          f"{row['torch']['backward_ms']:7.2f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three tiny cases, batch 1: the harness")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=7, help="timed repetitions (median)")
    p.add_argument("--threads", type=int, default=1, help="the NumPy path's threads (BLAS on 1) "
                   "and PyTorch's")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--json", metavar="PATH", nargs="?", const="",
                   help="write the figures to PATH (default benchmarks/results/<device>-<date>"
                        "-conv_algorithms.json)")
    args = p.parse_args(argv)
    cases, batch = (QUICK, 1) if args.quick else (CASES, args.batch)
    set_threads(args.threads)
    info = device_info("cpu")
    print(f"{info['name']}, batch {batch}, float32, {args.threads} thread(s), median of "
          f"{args.repeat}")
    rows = [run_case(name, shape, batch, args.repeat) for name, shape in cases.items()]
    if not args.no_torch and importlib.util.find_spec("torch"):
        import torch
        torch.set_num_threads(args.threads)
        for row, shape in zip(rows, cases.values()):  # after all of ours: no threads spinning
            torch_case(row, shape, batch, args.repeat)
    if args.json is not None:
        path = args.json or default_json_path(info).replace(".json", "-conv_algorithms.json")
        write_json(path, info, batch=batch, conv_algorithms=rows)
    return rows


if __name__ == "__main__":
    main()
