"""Every kernel family at the paper's shapes (batch 8 at 513x513, output stride 16; issue 9,
ARCHITECTURE.md s. 11), against the measured roofline and PyTorch.

Families: depthwise atrous conv (forward, backward-input, backward-weight) at 728 and 2048
channels 33x33, rates 1/6/12/18; im2col/col2im (the stem's dense 3x3 convs); batch norm (train
forward, backward) at 256 and 304 channels 129x129 and 728 and 2048 at 33x33; bilinear resize and
global average pooling; softmax cross-entropy at 21x513x513; ReLU.

Each op is timed whole ("fwd", "bwd": our kernels plus the CuPy glue around them). On ``cuda`` and
``emu`` the op's kernel launches are also recorded (common.LaunchLog) and each replayed alone with
the op's exact arguments, so every kernel gets its own row; on ``cpu`` the NumPy path is timed.
Kernel-path results are first checked against the NumPy path. Bytes are those that must move,
counted by hand below per kernel (each input read once, each output written once), so
"% of copy" is the fraction of a measured device-to-device copy's bandwidth; a kernel that reads
its input twice shows it, and the op's row is followed by the bound this puts on it (the bytes it
must move over the bytes its kernels move). FLOPs count a multiply-add as 2 and every tap,
padding included.

PyTorch, when importable, runs the same cases afterwards: FP32, NCHW, TF32 off (its cuDNN convs
use TF32 by default: torch.backends.cudnn.allow_tf32). Its FP32 NCHW *dilated* depthwise convs run
on its own native CUDA kernels, not cuDNN (cuDNN only for channels_last, or FP16/BF16 without
dilation), so that row compares kernel with kernel. Depthwise backward-input and backward-weight
are timed apart through aten.convolution_backward's output mask; im2col/col2im against
F.unfold/F.fold.

    python benchmarks/kernels.py --device cuda --json benchmarks/results/h100-DATE.json
    python benchmarks/kernels.py --device cpu             # the NumPy path, batch 8
    python benchmarks/kernels.py --device emu --quick     # small shapes: exercises the harness
"""
import argparse
import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minideeplab as mdl  # noqa: E402
import minideeplab.functional as F  # noqa: E402
import minideeplab.functional.conv as conv  # noqa: E402
import minideeplab.functional.resize as resize  # noqa: E402
from minideeplab.functional.norm import splits  # noqa: E402
from minideeplab.kernels import BLOCK, MACROS, MAX_GRID, launch  # noqa: E402
from benchmarks.common import (  # noqa: E402
    LaunchLog, conv_flops, copy_bandwidth, default_json_path, device_info, set_threads,
    gemm_gflops, gpu_available, nbytes, report, synchronize, timer, write_json)


@dataclass
class Case:
    """One op at one shape. ``make(device)`` -> (fn, tensors): ``fn(*tensors)`` is the op, and
    the tensors that require grad get gradients. ``moves``: (phase, kernel or "op") ->
    (bytes that must move, FLOPs), counted by hand, for the op's kernels and its reference
    kernels. ``torch(T)``: row -> PyTorch callable, T the same inputs as torch tensors (named like
    ``arrays``)."""
    name: str
    arrays: dict
    make: object
    moves: dict
    torch: object
    grad_out: bool = True  # False: a scalar output, backward seeds 1
    rows: dict = field(default_factory=dict)
    # dev -> {phase: callable}: the op's readable reference kernels (kernels/*.cu, issue 17),
    # each of whose launches gets a row beside the fast kernels' (cuda, emu)
    reference: object = None


def _rng_arrays(seed, **shapes):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}


def depthwise_case(n, c, hw, rate):
    a = _rng_arrays(0, x=(n, c, hw, hw), w=(c, 1, 3, 3), gy=(n, c, hw, hw))
    a["w"] /= 3
    x, w = a["x"].shape, a["w"].shape
    fl = conv_flops(n, c, c, hw, hw, 3, 3, groups=c)
    kw = dict(padding=rate, dilation=rate, groups=c)
    g = conv._geometry(x, w, None, 1, rate, rate, c)
    rows = conv._depthwise_rows(g, (hw, hw), (hw, hw), False)
    # the tiled weight gradient's partial sums: one per (weight, tile of an image)
    part = (c * 9, n * -(-hw // (conv.DW_TY * rows)) * -(-hw // conv.DW_TW)) if rows else w

    def torch_rows(T):
        import torch
        bwd = lambda mask: torch.ops.aten.convolution_backward(  # noqa: E731
            T["gy"], T["x"], T["w"], None, [1, 1], [rate, rate], [rate, rate], False, [0, 0], c,
            mask)
        fwd = lambda: torch.nn.functional.conv2d(T["x"], T["w"], **kw)  # noqa: E731
        return {("fwd", "op"): fwd, ("fwd", "depthwise_forward"): fwd,
                ("bwd", "depthwise_backward_input"): lambda: bwd([True, False, False]),
                ("bwd", "depthwise_backward_weight"): lambda: bwd([False, True, False]),
                ("bwd", "op"): lambda: bwd([True, True, False])}

    def reference(dev):
        d = mdl.get_device(dev)
        X, Wt, GY = (d.asarray(a[k]) for k in ("x", "w", "gy"))
        y, gx, gw, args = d.xp.empty_like(GY), d.xp.empty_like(X), d.xp.empty_like(Wt), (
            (1,) + conv._geom_args(g))
        return {"fwd": lambda: launch(d, "conv", "depthwise_forward_reference",
                                      (X, Wt, y) + args, n=y.size),
                "bwd": lambda: (launch(d, "conv", "depthwise_backward_input_reference",
                                       (GY, Wt, gx) + args, n=gx.size),
                                launch(d, "conv", "depthwise_backward_weight_reference",
                                       (X, GY, gw) + args, grid=min(gw.size, MAX_GRID)))}
    fwd_moves, bwi_moves, bww_moves = (nbytes(x, w, x), fl), (nbytes(x, w, x), fl), (
        nbytes(x, x, w), fl)  # x, w in, y out; gy, w in, gx out; x, gy in, gw out
    return Case(
        f"depthwise 3x3 {c}ch {hw}x{hw} rate {rate}", a,
        lambda dev: (lambda X, W: F.conv2d(X, W, **kw),
                     [mdl.Tensor(a[k], requires_grad=True, device=dev) for k in ("x", "w")]),
        {("fwd", "op"): (nbytes(x, w, x), fl), ("fwd", "depthwise_forward"): fwd_moves,
         ("bwd", "op"): (nbytes(x, x, w, x, w), 2 * fl),  # gy, x, w in; gx, gw out
         ("bwd", "depthwise_backward_input"): bwi_moves,
         ("bwd", "depthwise_backward_weight"): (nbytes(x, x, part), fl),  # partial sums out
         ("bwd", "channel_sum"): (nbytes(part, w), int(np.prod(part))),  # their fixed-order sum
         ("fwd", "depthwise_forward_reference"): fwd_moves,
         ("bwd", "depthwise_backward_input_reference"): bwi_moves,
         ("bwd", "depthwise_backward_weight_reference"): bww_moves},
        torch_rows, reference=reference)


def im2col_case(n, cin, cout, hw, stride):
    ho = (hw - 1) // stride + 1
    a = _rng_arrays(0, x=(n, cin, hw, hw), w=(cout, cin, 3, 3), gy=(n, cout, ho, ho))
    x, w, y, cols = a["x"].shape, a["w"].shape, a["gy"].shape, (n, cin * 9, ho * ho)
    fl = conv_flops(n, cin, cout, ho, ho, 3, 3)
    kw = dict(stride=stride, padding=1)

    def torch_rows(T):
        import torch
        fn = torch.nn.functional
        unfolded = fn.unfold(T["x"], 3, padding=1, stride=stride)
        fwd = lambda: fn.conv2d(T["x"], T["w"], **kw)  # noqa: E731
        return {("fwd", "op"): fwd, ("bwd", "op"): _torch_backward(fwd, T, ("x", "w")),
                ("fwd", "im2col"): lambda: fn.unfold(T["x"], 3, padding=1, stride=stride),
                ("bwd", "col2im"): lambda: fn.fold(unfolded, (hw, hw), 3, padding=1,
                                                   stride=stride)}
    return Case(
        f"conv 3x3 {cin}->{cout} {hw}x{hw} stride {stride}", a,
        lambda dev: (lambda X, W: F.conv2d(X, W, **kw),
                     [mdl.Tensor(a[k], requires_grad=True, device=dev) for k in ("x", "w")]),
        {("fwd", "op"): (nbytes(x, w, y), fl), ("fwd", "im2col"): (nbytes(x, cols), 0),
         ("bwd", "op"): (nbytes(y, x, w, x, w), 2 * fl),
         ("bwd", "im2col"): (nbytes(x, cols), 0),  # the backward builds the columns again
         ("bwd", "col2im"): (nbytes(cols, x), int(np.prod(cols)))},  # one add per column entry
        torch_rows)


def bn_case(n, c, hw):
    a = _rng_arrays(0, x=(n, c, hw, hw), gy=(n, c, hw, hw), gamma=(c,), beta=(c,))
    x, e, ch = a["x"].shape, a["x"].size, (c,)
    split = (2, c, splits(n * hw * hw))  # the split sums' partials (s1, s2) per block

    def make(dev):
        d = mdl.get_device(dev)
        rm, rv = d.asarray(np.zeros(c, np.float32)), d.asarray(np.ones(c, np.float32))
        return (lambda X, G, B: F.batch_norm(X, G, B, rm, rv, True),
                [mdl.Tensor(a[k], requires_grad=True, device=dev) for k in ("x", "gamma", "beta")])

    def torch_rows(T):
        import torch
        rm, rv = torch.zeros(c, device=T["x"].device), torch.ones(c, device=T["x"].device)
        fwd = lambda: torch.nn.functional.batch_norm(  # noqa: E731
            T["x"], rm, rv, T["gamma"], T["beta"], True)
        return {("fwd", "op"): fwd, ("bwd", "op"): _torch_backward(fwd, T, ("x", "gamma", "beta"))}

    def reference(dev):
        """The one-block-per-channel statistics: channel_sum, bn_moments and bn_statistics;
        backward bn_moments and bn_backward_coefficients (the elementwise kernels are shared)."""
        d = mdl.get_device(dev)
        X, GY, G = (d.asarray(a[k].reshape(n, c, -1)) for k in ("x", "gy", "gamma"))
        rm, rv, sums = d.xp.zeros(c, np.float32), d.xp.ones(c, np.float32), d.xp.empty_like(G)
        mom, stats, coef, L = d.xp.empty((2, c), np.float32), d.xp.empty((3, c), np.float32), (
            d.xp.empty((4, c), np.float32)), hw * hw

        def fwd():
            launch(d, "reduce", "channel_sum", (X, sums, n, c, L), grid=c)
            launch(d, "norm", "bn_moments", (X, sums, n * L, X, 1, mom, n, c, L), grid=c)
            launch(d, "norm", "bn_statistics", (sums, mom, G, rm, rv, stats, c, n * L, 0.1, 1e-5,
                                                1), n=c)

        def bwd():
            launch(d, "norm", "bn_moments", (X, stats[0], 1, GY, 0, mom, n, c, L), grid=c)
            launch(d, "norm", "bn_backward_coefficients", (mom, G, stats[1], coef, c, n * L, 1),
                   n=c)
        return {"fwd": fwd, "bwd": bwd}
    return Case(
        f"batch_norm {c}ch {hw}x{hw}", a, make,
        # Per element: forward mean, deviation, its square, scale, shift; backward two products
        # into the sums and four to form dx. The per-channel kernels move vectors of c values
        # and the B partials of each: bn_split_statistics reads 2 B partials, x[c, 0], gamma,
        # 2 running and writes 2 running, 3 stats (~16 operations per channel);
        # bn_split_coefficients reads 2 B partials, gamma, invstd and writes 5 (~6 operations).
        # The reference kernels: bn_statistics reads sums, 2 moments, gamma, 2 running and
        # writes 2 running, 3 stats; bn_backward_coefficients reads 2 moments, gamma, invstd and
        # writes 4 coefficients.
        {("fwd", "op"): (nbytes(x, x), 5 * e), ("fwd", "bn_split_sums"): (nbytes(x, split), 3 * e),
         ("fwd", "bn_split_statistics"): (nbytes(split, *[ch] * 9), 16 * c),
         ("fwd", "bn_forward"): (nbytes(x, x), 2 * e),
         ("bwd", "op"): (nbytes(x, x, x), 6 * e), ("bwd", "bn_backward_sums"): (nbytes(x, x, split),
                                                                              3 * e),
         ("bwd", "bn_split_coefficients"): (nbytes(split, *[ch] * 7), 6 * c),
         ("bwd", "bn_backward_dx"): (nbytes(x, x, x), 4 * e),
         ("fwd", "channel_sum"): (nbytes(x), e), ("fwd", "bn_moments"): (nbytes(x), 3 * e),
         ("fwd", "bn_statistics"): (nbytes(*[ch] * 11), 16 * c),
         ("bwd", "bn_moments"): (nbytes(x, x), 3 * e),
         ("bwd", "bn_backward_coefficients"): (nbytes(*[ch] * 8), 6 * c)},
        torch_rows, reference=reference)


def resize_case(n, c, hw, out):
    a = _rng_arrays(0, x=(n, c, hw, hw), gy=(n, c, out, out))
    moved, fl = nbytes(a["x"].shape, a["gy"].shape), 6 * a["gy"].size  # 3 lerps per output

    def torch_rows(T):
        import torch
        fwd = lambda: torch.nn.functional.interpolate(  # noqa: E731
            T["x"], size=(out, out), mode="bilinear", align_corners=True)
        return {("fwd", "op"): fwd, ("fwd", "resize_bilinear_forward"): fwd,
                ("bwd", "op"): _torch_backward(fwd, T, ("x",)),
                ("bwd", "resize_bilinear_backward"): _torch_backward(fwd, T, ("x",))}

    def reference(dev):
        d = mdl.get_device(dev)
        X, GY = d.asarray(a["x"]), d.asarray(a["gy"])
        y, gx = d.xp.empty_like(GY), d.xp.empty_like(X)
        fwd, bwd = ([*resize._on_device(d, np.float32, t, hw, out, True)] * 2  # rows = columns
                    for t in (resize._axis, resize._by_input))
        return {"fwd": lambda: launch(d, "resize", "resize_bilinear_forward_reference",
                                      (X, *fwd, y, hw, hw, out, out, y.size), n=y.size),
                "bwd": lambda: launch(d, "resize", "resize_bilinear_backward_reference",
                                      (GY, *bwd, gx, hw, hw, out, out, gx.size), n=gx.size)}
    return Case(
        f"resize {c}ch {hw}x{hw} -> {out}x{out}", a,
        lambda dev: (lambda X: F.resize_bilinear(X, (out, out)),
                     [mdl.Tensor(a["x"], requires_grad=True, device=dev)]),
        {(p, k): (moved, fl) for p, k in (
            ("fwd", "op"), ("fwd", "resize_bilinear_forward"),
            ("fwd", "resize_bilinear_forward_reference"), ("bwd", "op"),
            ("bwd", "resize_bilinear_backward"), ("bwd", "resize_bilinear_backward_reference"))},
        torch_rows, reference=reference)


def pool_case(n, c, hw):
    a = _rng_arrays(0, x=(n, c, hw, hw), gy=(n, c, 1, 1))
    x = a["x"].shape

    def torch_rows(T):
        import torch
        fwd = lambda: torch.nn.functional.adaptive_avg_pool2d(T["x"], 1)  # noqa: E731
        return {("fwd", "op"): fwd, ("fwd", "channel_sum"): fwd}
    return Case(
        f"global_avg_pool {c}ch {hw}x{hw}", a,
        lambda dev: (F.global_avg_pool, [mdl.Tensor(a["x"], requires_grad=True, device=dev)]),
        # The backward is a broadcast view: nothing must move until its consumer reads it.
        {("fwd", "op"): (nbytes(x), a["x"].size), ("fwd", "channel_sum"): (nbytes(x), a["x"].size)},
        torch_rows)


def loss_case(n, classes, hw):
    a = _rng_arrays(0, x=(n, classes, hw, hw))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, classes, (n, hw, hw)).astype(np.int64)
    labels[rng.random(labels.shape) < 0.05] = 255  # VOC's boundary band
    x, lab32, pix = a["x"].shape, labels.shape, (n, hw, hw)
    fl = 5 * a["x"].size  # max, subtract, exp, sum, divide per logit

    def torch_rows(T):
        import torch
        lab = torch.as_tensor(labels, device=T["x"].device)
        fwd = lambda: torch.nn.functional.cross_entropy(T["x"], lab, ignore_index=255)  # noqa: E731
        return {("fwd", "op"): fwd, ("bwd", "op"): _torch_backward(fwd, T, ("x",))}
    def make(dev):
        lab = mdl.Tensor(labels, device=dev)  # moved to the device once, not per call
        return (lambda X: F.softmax_cross_entropy(X, lab),
                [mdl.Tensor(a["x"], requires_grad=True, device=dev)])
    return Case(
        f"softmax_xent {classes}ch {hw}x{hw}", a, make,
        # The op must read logits and labels forward, and again backward to write the gradient;
        # our forward also writes the probabilities (the backward reads them instead of logits).
        {("fwd", "op"): (nbytes(x, lab32), fl),
         ("fwd", "softmax_xent_forward"): (nbytes(x, lab32, x, pix), fl),
         ("bwd", "op"): (nbytes(x, lab32, x), 2 * a["x"].size),
         ("bwd", "softmax_xent_backward"): (nbytes(x, lab32, x), 2 * a["x"].size)},
        torch_rows, grad_out=False)


def relu_case(n, c, hw):
    a = _rng_arrays(0, x=(n, c, hw, hw), gy=(n, c, hw, hw))
    x, e = a["x"].shape, a["x"].size

    def torch_rows(T):
        import torch
        y = torch.relu(T["x"])
        return {("fwd", "op"): lambda: torch.relu(T["x"]),
                ("bwd", "op"): lambda: torch.ops.aten.threshold_backward(T["gy"], y, 0)}
    return Case(
        f"relu {c}ch {hw}x{hw}", a,
        lambda dev: (F.relu, [mdl.Tensor(a["x"], requires_grad=True, device=dev)]),
        {("fwd", "op"): (nbytes(x, x), e), ("fwd", "relu_forward"): (nbytes(x, x), e),
         ("bwd", "op"): (nbytes(x, x, x), e), ("bwd", "relu_backward"): (nbytes(x, x, x), e)},
        torch_rows)


def _torch_backward(fwd, T, names):
    """PyTorch's backward of ``fwd()`` into the inputs ``names``, on a graph kept between calls."""
    import torch
    ins = [T[k].requires_grad_() for k in names]
    y = fwd()
    gy = T["gy"] if "gy" in T and T["gy"].shape == y.shape else torch.ones_like(y)
    return lambda: torch.autograd.grad(y, ins, gy, retain_graph=True)


def cases(quick):
    """The paper's shapes at batch 8 (output stride 16: 33x33 backbone end, 129x129 decoder,
    257x257 after the stem's stride 2); ``quick``: batch 1, ~1/32 of the channels and small maps,
    enough to run every code path (on emu) in seconds."""
    n = 1 if quick else 8
    ch = (lambda c: max(4, c // 32)) if quick else (lambda c: c)
    s33, s129, s257, s513 = (5, 17, 33, 65) if quick else (33, 129, 257, 513)
    return ([depthwise_case(n, ch(c), s33, r) for c in (728, 2048) for r in (1, 6, 12, 18)]
            + [im2col_case(n, 3, ch(32) if quick else 32, s513, 2),
               im2col_case(n, ch(32), ch(64), s257, 1)]
            + [bn_case(n, ch(c), s129) for c in (256, 304)]
            + [bn_case(n, ch(c), s33) for c in (728, 2048)]
            + [resize_case(n, ch(256), s33, s129), resize_case(n, 21, s129, s513),
               resize_case(n, ch(256), 1, s33), pool_case(n, ch(2048), s33),
               loss_case(n, 21, s513), relu_case(n, ch(256), s129)])


def run_ours(case, device, repeat, peak_bw):
    """Check (kernel path), time the op and, on the kernel path, each of its kernels."""
    def prepare(dev):
        fn, ins = case.make(dev)
        y = fn(*ins)
        gy = mdl.Tensor(case.arrays["gy"], device=dev) if case.grad_out else None

        def backward():
            for t in ins:
                t.grad = None
            y.backward(gy, retain_graph=True)
        backward()
        return (lambda: fn(*ins)), backward, [y.data] + [t.grad for t in ins]

    fwd, bwd, got = prepare(device)
    dev = mdl.get_device(device)
    if dev.uses_kernels:  # the kernels against the NumPy path
        for g, want in zip(got, prepare("cpu")[2]):
            np.testing.assert_allclose(mdl.Tensor(g).numpy(), want, rtol=1e-3, atol=1e-3,
                                       err_msg=case.name)
    time_fn = timer(device, repeat)
    with mdl.no_grad():
        for phase, op in (("fwd", fwd), ("bwd", bwd)):
            if (phase, "op") not in case.moves:
                continue
            case.rows[phase, "op"] = report(f"{case.name} {phase}", time_fn(op),
                                            *case.moves[phase, "op"], peak_gbps=peak_bw)
            if not dev.uses_kernels:
                continue
            with LaunchLog(dev) as log:
                op()
            synchronize(device)
            _kernel_rows(case, phase, log, time_fn, peak_bw)
            # The bytes model's verdict on the design: the op's kernels together move this much,
            # so even at copy speed each, the op reaches at most must / moved of the copy rate
            # (CuPy's glue and GEMMs are not logged: a bound, not an estimate).
            op = case.rows[phase, "op"]
            op["kernel_bytes"] = sum(case.moves[phase, c.kernel][0] for c in log.calls)
            op["bound_frac_peak_bw"] = min(1.0, op["bytes"] / op["kernel_bytes"])
            if op["kernel_bytes"] > op["bytes"]:
                print(f"  (its kernels move {op['kernel_bytes'] / op['bytes']:.2f}x the bytes the "
                      f"op must: at most {100 * op['bound_frac_peak_bw']:.0f}% of copy)")
            if case.reference:  # the reference kernels, each alone (those not shared)
                with LaunchLog(dev) as ref:
                    case.reference(device)[phase]()
                synchronize(device)
                ref.calls = [c for c in ref.calls if (phase, c.kernel) not in case.rows]
                _kernel_rows(case, phase, ref, time_fn, peak_bw, "reference ")


def _kernel_rows(case, phase, log, time_fn, peak_bw, label=""):
    """A row per launch of ``log``, each replayed alone with its exact arguments."""
    for call in log.calls:
        if (phase, call.kernel) not in case.moves:
            raise KeyError(f"{case.name}: count the bytes of {phase} kernel {call.kernel!r} in "
                           f"its case's moves")
        key = (phase, call.kernel)
        if key in case.rows:  # one kernel launched twice in a phase: a second row
            key = (phase, f"{call.kernel} #2")
        case.rows[key] = report(f"  {label}{call.kernel}", time_fn(lambda c=call: log.replay(c)),
                                *case.moves[phase, call.kernel], peak_gbps=peak_bw)


def run_torch(case, device, repeat, peak_bw):
    """The same rows in PyTorch (FP32, TF32 off), with ours / PyTorch's time."""
    import torch
    dev = "cuda" if device == "cuda" else "cpu"
    T = {k: torch.tensor(v, device=dev) for k, v in case.arrays.items()}
    time_fn = timer(device, repeat)
    for key, fn in case.torch(T).items():
        if key not in case.rows:
            continue
        with torch.no_grad() if key[0] == "fwd" else contextlib.nullcontext():
            ms = time_fn(fn)  # forward without a graph, as ours under mdl.no_grad()
        ours = case.rows[key]
        label = f"{case.name} {key[0]}" if key[1] == "op" else f"  {key[1]}"
        r = report(f"torch {label}", ms, *case.moves[key], peak_gbps=peak_bw,
                   extra=f"ours {ours['ms'] / ms:.2f}x torch's time")
        ours.update(torch_ms=ms, ratio=ours["ms"] / ms, torch_frac_peak_bw=r["frac_peak_bw"])


# -- loads per output, counted on the emulator (issue 17) -----------------------------------
# Every read of a global array in conv.cu's depthwise kernels and in reduce.cu (the weight
# gradient's finish) goes through one of these names; an instrumented copy counts them.
GLOBAL_READS = r"\b(x|xc|wt|wc|gy|gyc|src)\["


@contextlib.contextmanager
def counted_loads(edit=None):
    """Inside, the depthwise op (and direct launches of the ``"conv"``/``"reduce"`` families)
    run copies of conv.cu and reduce.cu whose global reads each add 1 to a counter;
    yields ``loads()``, the count since the last call (emu only). ``edit``: text -> text, applied
    to conv.cu first (lesson 10 changes its tile size)."""
    dev, src = mdl.get_device("emu"), os.path.dirname(conv.__file__) + "/../kernels/"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(src + "block_reduce.cuh", tmp)
        paths = {}
        for family in ("conv", "reduce"):
            text = open(src + family + ".cu").read()
            text = edit(text) if edit and family == "conv" else text
            paths[family] = os.path.join(tmp, family + ".cu")
            with open(paths[family], "w") as f:
                f.write('extern "C" { long long emu_loads = 0; }\n'
                        "#define EMU_LOAD(p) (++emu_loads, p)\n"
                        + re.sub(GLOBAL_READS, r"EMU_LOAD(\1)[", text))
        counters = [ctypes.c_longlong.in_dll(dev.module(p, np.float32)._lib, "emu_loads")
                    for p in paths.values()]

        def loads():
            total = sum(c.value for c in counters)
            for c in counters:
                c.value = 0
            return total
        plain = conv.launch
        conv.launch = lambda d, family, *a, **k: plain(d, paths.get(family, family), *a, **k)
        try:
            yield loads
        finally:
            conv.launch = plain


def depthwise_loads(n, c, hw, rate, stride=1, edit=None):
    """Global loads per output pixel (element of y) of the depthwise kernels, reference and tiled,
    counted on emu for a 3x3 conv of rate ``rate`` over an (n, c, hw, hw) float32 input; every
    result is first checked against the NumPy path. ``edit``: as counted_loads'."""
    rng = np.random.default_rng(0)
    g = conv._geometry((n, c, hw, hw), (c, 1, 3, 3), None, stride, rate, rate, c)
    x, w = rng.standard_normal((n, c, hw, hw), np.float32), rng.standard_normal((c, 1, 3, 3),
                                                                               np.float32)
    gy = rng.standard_normal((n, c, g.Ho, g.Wo), np.float32)
    dev, args, out = mdl.get_device("emu"), (1,) + conv._geom_args(g), gy.size
    counts = {}
    numpy = conv.DepthwiseConv2d(g)
    numpy.dev, numpy.needs_grad = mdl.get_device("cpu"), (True, True)
    want = (numpy.forward_cpu(x, w), *numpy.backward_cpu(gy)[:2])
    with counted_loads(edit) as loads:
        op = conv.DepthwiseConv2d(g)
        op.dev, op.needs_grad = dev, (True, False)
        loads()
        got = [op.forward_kernel(x, w)]
        counts["depthwise_forward"] = loads()
        got.append(op.backward_kernel(gy)[0])
        counts["depthwise_backward_input"] = loads()
        op.needs_grad = (False, True)
        got.append(op.backward_kernel(gy)[1])
        counts["depthwise_backward_weight + channel_sum"] = loads()
        for kernel, arrays, grid in (
                ("forward", (x, w, np.empty_like(gy)), dict(n=out)),
                ("backward_input", (gy, w, np.empty_like(x)), dict(n=x.size)),
                ("backward_weight", (x, gy, np.empty_like(w)), dict(grid=min(w.size, MAX_GRID)))):
            conv.launch(dev, "conv", f"depthwise_{kernel}_reference", arrays + args, **grid)
            counts[f"depthwise_{kernel}_reference"] = loads()
            got.append(arrays[-1])
    for a, b in zip(got, want + want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    return {k: v / out for k, v in counts.items()}


@contextlib.contextmanager
def tile_width(tw):
    """Inside, the tiled depthwise kernels' tiles are ``tw`` columns wide on the host
    (``conv.DW_TW``, ``conv.DW_TY``) and in the modules built from then on (``kernels.MACROS``,
    handed to the compiler); the old width is back afterwards. The loader keeps the modules it
    built before, so use it around ``depthwise_loads``, whose copies of conv.cu are built afresh.
    Lesson 10's exercise writes the same, as ``with_tile_width``."""
    if tw <= 0 or BLOCK % tw:
        raise ValueError(f"a tile width must divide BLOCK = {BLOCK}, got {tw}")
    saved = MACROS["DW_TW"], conv.DW_TW, conv.DW_TY
    MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = tw, tw, BLOCK // tw
    try:
        yield
    finally:
        MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = saved


def loads_table(quick):
    """depthwise_loads at the paper's maps and rates (a few channels: the count per output does
    not depend on them), with the bytes per output they imply next to the bytes model's."""
    shapes = [(5, r) for r in (1, 6)] if quick else [(33, r) for r in (1, 6, 12, 18)] + [
        (129, r) for r in (1, 6, 12, 18)]
    rows = []
    for hw, rate in shapes:
        counts = depthwise_loads(1, 2, hw, rate)
        for kernel, per_out in counts.items():
            # float32, one store per output (the weight gradient: its few partials, not counted);
            # the bytes model: each input read once, each output written once (8 B)
            requested = 4 * (per_out + (0 if "weight" in kernel else 1))
            rows.append(dict(hw=hw, rate=rate, kernel=kernel, loads_per_output=per_out,
                             bytes_per_output=requested, must_bytes_per_output=8.0))
            print(f"{hw:4d}x{hw:<4d} rate {rate:2d}  {kernel:40s} {per_out:6.2f} loads/output "
                  f"{requested:6.2f} B/output (must: 8)")
    return rows


def torch_usable(device):
    if device == "emu" or not importlib.util.find_spec("torch"):
        return False  # emu against PyTorch's CPU kernels would compare nothing
    import torch
    if device == "cuda" and not torch.cuda.is_available():
        return False
    torch.backends.cudnn.allow_tf32 = False  # FP32 against FP32 (TF32 is cuDNN's default)
    torch.backends.cuda.matmul.allow_tf32 = False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda", "emu"],
                   default="cuda" if gpu_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shapes, 2 repeats (seconds)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (median)")
    p.add_argument("--cases", default="", help="only cases whose name contains this text")
    p.add_argument("--threads", type=int, help="CPU threads, ours (BLAS on one) and PyTorch's")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--loads", action="store_true", help="only count the depthwise kernels' global "
                   "loads per output on emu (reference and tiled; --json writes them)")
    p.add_argument("--json", metavar="PATH", nargs="?", const="",
                   help="write every figure to PATH (default benchmarks/results/<device>-<date>"
                        ".json)")
    args = p.parse_args(argv)
    if args.loads:
        rows = loads_table(args.quick)
        if args.json is not None:
            write_json(args.json or default_json_path(device_info("emu")), device_info("emu"),
                       depthwise_loads=rows)
        return rows
    repeat = args.repeat or (2 if args.quick else 5)
    if args.threads:
        set_threads(args.threads)
    info = device_info(args.device)
    peak_bw = copy_bandwidth(args.device, 16 if args.quick else 256)
    gemm = gemm_gflops(args.device, 256 if args.quick else None)
    info.update(copy_gbps=peak_bw, gemm_gflops=gemm, quick=args.quick)
    print(f"-- {info['name']} ({args.device}), float32; measured copy {peak_bw:.1f} GB/s, "
          f"FP32 GEMM {gemm:.0f} GFLOP/s; median of {repeat}")
    todo = [c for c in cases(args.quick) if args.cases in c.name]
    for case in todo:
        run_ours(case, args.device, repeat, peak_bw)
    # PyTorch after all of ours: on 2 cores the BLAS and OpenMP threads of the two libraries
    # spin against each other when they alternate.
    if not args.no_torch and torch_usable(args.device):
        import torch
        if args.device != "cuda" and args.threads:
            torch.set_num_threads(args.threads)
        print(f"-- PyTorch {torch.__version__}, FP32, TF32 off, {torch.get_num_threads()} threads")
        for case in todo:
            run_torch(case, args.device, repeat, peak_bw)
    if args.json is not None:
        rows = [dict(case=c.name, phase=ph, kernel=k, **r) for c in todo
                for (ph, k), r in c.rows.items()]
        write_json(args.json or default_json_path(info), info, kernels=rows)
    return todo


if __name__ == "__main__":
    main()
