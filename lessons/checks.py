"""Graders for the lessons' exercises: each takes the learner's code and checks it against an
independent reference (central differences, SciPy, tables written by hand; a learner's kernel is
first run on ``emu`` in checking mode), saying what is wrong (shape, value, gradient, index, the
emulator's error) instead of just that it failed.

A stub as shipped (raises ``NotImplementedError`` or returns None) is "not done yet": the grader
prints that and returns, so the notebook runs to the end. A wrong answer raises AssertionError with
the diagnosis; a right one prints what was checked. Every grader returns ``NOT_DONE`` or ``PASSED``
(tests/test_exercises.py runs each on the stub, the reference solution and wrong solutions).
"""
import math
import tempfile
from pathlib import Path

import numpy as np
import scipy.signal
from threadpoolctl import threadpool_limits

import minideeplab as mdl
import minideeplab.functional as F
import minideeplab.functional.conv as conv
from minideeplab import kernels
from minideeplab.device import Emu
from minideeplab.emu import runner
from minideeplab.gradcheck import check_backward
from minideeplab.kernels import BLOCK, launch, loader

NOT_DONE, PASSED = "not done yet", "passed"


def _attempt(fn, *args):
    """``fn(*args)``, or None where ``fn`` is the shipped stub (raises NotImplementedError)."""
    try:
        return fn(*args)
    except NotImplementedError:
        return None


def _not_done(exercise):
    print(f"{exercise}: {NOT_DONE} (fill in the cell above, then run this one again)")
    return NOT_DONE


def _same_shape(what, got, expected):
    got = np.shape(got)
    assert got == tuple(expected), f"shape: {what} has shape {got}, expected {tuple(expected)}"


def _first_difference(what, got, expected, rtol=1e-7, atol=1e-9):
    """AssertionError naming the first index where ``got`` and ``expected`` differ."""
    bad = ~np.isclose(got, expected, rtol=rtol, atol=atol)
    if bad.any():
        ix = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"value: {what} differs at {int(bad.sum())} of {bad.size} entries; "
                             f"first at index {ix}: got {got[ix]:.6g}, expected "
                             f"{expected[ix]:.6g}")


def check_sigmoid_backward(Sigmoid):
    """Lesson 1: the backward of ``Sigmoid``, a Function whose forward is 1 / (1 + exp(-x)),
    graded by central differences (``check_backward``), not by a formula."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4)) * 2
    op = Sigmoid()
    y = op(mdl.Tensor(x, requires_grad=True))
    _first_difference("the forward", y.numpy(), 1 / (1 + np.exp(-x)))
    gy = rng.standard_normal(x.shape)
    gx = _attempt(op.backward, gy)
    if gx is None:
        return _not_done("Sigmoid.backward")
    _same_shape("backward(gy)", gx, x.shape)
    check_backward(lambda v: Sigmoid()(v), [x])  # "gradient check failed ... first: (i, j) ..."
    print("Sigmoid.backward: matches central differences on a 3x4 input")
    return PASSED


def _zero_inserted(w, rate):
    k = w.shape[-1]
    out = np.zeros(w.shape[:-2] + (rate * (k - 1) + 1,) * 2)
    out[..., ::rate, ::rate] = w
    return out


def _atrous_reference(x, w, rate):
    """SciPy's correlation ("same" size, zero padding) with a zero-inserted kernel, summed over
    input channels: knows nothing about rates or columns."""
    wd = _zero_inserted(w, rate)
    return np.array([[sum(scipy.signal.correlate(xn[c], wd[o, c], mode="same")
                          for c in range(x.shape[1])) for o in range(w.shape[0])] for xn in x])


def check_atrous_im2col(atrous_conv2d_im2col):
    """Lesson 2: a 3x3 atrous convolution (stride 1, padding = rate, "same" size) by im2col and
    one matrix product, against SciPy at rates 1, 2, 3 and 7 (a rate larger than the map)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 5))  # sizes that are not round: edges matter
    w = rng.standard_normal((4, 3, 3, 3))
    right = []
    for rate in (1, 2, 3, 7):
        y = _attempt(atrous_conv2d_im2col, x, w, rate)
        if y is None:
            return _not_done("atrous_conv2d_im2col")
        expected = _atrous_reference(x, w, rate)
        _same_shape(f"the output at rate {rate}", y, expected.shape)
        try:
            _first_difference(f"the output at rate {rate} (index: image, channel, row, column)",
                              y, expected)
        except AssertionError as e:
            hint = (f"; right at rate {right}, so look at how the rate spaces the taps and pads"
                    if right else "")
            raise AssertionError(f"{e}{hint}") from None
        right.append(rate)
    print("atrous_conv2d_im2col: matches SciPy at rates", right)
    return PASSED


def _bn_forward(x, gamma, beta, eps):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return gamma[:, None, None] * (x - mean) / np.sqrt(var + eps) + beta[:, None, None]


def _central_differences(f, inputs, gy, eps=1e-6):
    """d/d inputs of sum(f(*inputs) * gy), one element at a time (float64)."""
    grads = []
    for i, a in enumerate(inputs):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = [b.copy() for b in inputs], [b.copy() for b in inputs]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = ((f(*plus) - f(*minus)) * gy).sum() / (2 * eps)
        grads.append(g)
    return grads


def check_batch_norm_backward(batch_norm_backward):
    """Lesson 4: the training-mode batch-norm backward ``(gx, ggamma, gbeta)``, graded against
    central differences of a NumPy forward (batch statistics over N, H, W)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 2)) * [[[2.0]], [[0.5]], [[1.0]]] + 1
    gamma, beta, gy = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(x.shape)
    eps = 1e-5
    got = _attempt(batch_norm_backward, x, gamma, gy, eps)
    if got is None:
        return _not_done("batch_norm_backward")
    assert isinstance(got, tuple) and len(got) == 3, \
        f"batch_norm_backward must return (gx, ggamma, gbeta), got {type(got).__name__}"
    expected = _central_differences(lambda *a: _bn_forward(*a, eps), [x, gamma, beta], gy)
    for name, g, e in zip(("gx", "ggamma", "gbeta"), got, expected):
        _same_shape(name, g, e.shape)
    for name, g, e in zip(("gx", "ggamma", "gbeta"), got, expected):
        index = "image, channel, row, column" if name == "gx" else "channel"
        try:
            _first_difference(f"gradient {name} (index: {index})", g, e, rtol=1e-5, atol=1e-6)
        except AssertionError as err:
            held = gamma[:, None, None] * gy / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)
            hint = ("; this is the gradient with the batch mean and variance held constant: they"
                    " depend on x too" if name == "gx" and np.allclose(g, held) else "")
            raise AssertionError(f"{err}{hint}") from None
    print("batch_norm_backward: gx, ggamma and gbeta match central differences")
    return PASSED


def _depthwise_reference(x, w, rate, tiled=False):
    """Output channel ``o`` is SciPy's correlation ("same" size) of input channel ``o // m``
    (``o % C`` if ``tiled``, the wrong order) with filter ``o``, zero-inserted: one channel at a
    time, no channel ever mixed in."""
    c, m = x.shape[1], w.shape[0] // x.shape[1]
    wd = _zero_inserted(w[:, 0], rate)
    return np.array([[scipy.signal.correlate(xn[o % c if tiled else o // m], wd[o], mode="same")
                      for o in range(w.shape[0])] for xn in x])


def check_depthwise_conv(depthwise_conv2d):
    """Lesson 3: a depthwise convolution (stride 1, "same" size) with channel multiplier ``m``:
    ``w`` is ``(C * m, 1, k, k)`` and output channel ``o`` reads input channel ``o // m``, against
    SciPy per channel at rates 1, 2 and 5 and multipliers 1 and 2."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    right = []
    for m in (1, 2):
        w = rng.standard_normal((3 * m, 1, 3, 3))
        for rate in (1, 2, 5):
            y = _attempt(depthwise_conv2d, x, w, rate)
            if y is None:
                return _not_done("depthwise_conv2d")
            expected = _depthwise_reference(x, w, rate)
            what = f"the output at rate {rate}, multiplier {m}"
            _same_shape(what, y, expected.shape)
            try:
                _first_difference(f"{what} (index: image, channel, row, column)", y, expected)
            except AssertionError as e:
                hint = ""
                if m > 1 and np.allclose(y, _depthwise_reference(x, w, rate, tiled=True)):
                    hint = "; output channel o reads input channel o // m, not o % C"
                elif right:
                    hint = f"; right at (rate, multiplier) {right}"
                raise AssertionError(f"{e}{hint}") from None
            right.append((rate, m))
    print("depthwise_conv2d: matches SciPy per channel at (rate, multiplier)", right)
    return PASSED


# Stem stride, unit names and (stride, rate) per unit at output stride 32 (the design strides),
# 16 and 8, written out by hand, not computed by any walk over the units. Xception-65 (DeepLabv3+
# Fig. 4): a stride-2 stem, entry blocks of stride 2, 16 middle blocks, exit block 1 of stride 2.
# ResNet-101 (He et al. Table 1; TF-slim's resnet_v1 puts a block's stride on its last unit):
# stem stride 4 (conv1 + max pool), blocks of 3, 4, 23 and 3 units, block 4 of stride 1.
_S2, _S1 = (2, 1), (1, 1)
_XCEPTION_UNITS = ([f"entry block {i}" for i in (1, 2, 3)]
                   + [f"middle block {i}" for i in range(1, 17)] + ["exit block 1", "exit block 2"])
_OUTPUT_STRIDE_TABLES = {
    "Xception-65": (2, _XCEPTION_UNITS, {
        32: [_S2] * 3 + [_S1] * 16 + [_S2, _S1],
        16: [_S2] * 3 + [_S1] * 16 + [_S1, (1, 2)],
        8: [_S2] * 2 + [_S1] + [(1, 2)] * 16 + [(1, 2), (1, 4)],
    }),
    "ResNet-101": (4, [f"block {b} unit {u}" for b, n in enumerate((3, 4, 23, 3), 1)
                       for u in range(1, n + 1)], {
        32: [_S1] * 2 + [_S2] + [_S1] * 3 + [_S2] + [_S1] * 22 + [_S2] + [_S1] * 3,
        16: [_S1] * 2 + [_S2] + [_S1] * 3 + [_S2] + [_S1] * 23 + [(1, 2)] * 3,
        8: [_S1] * 2 + [_S2] + [_S1] * 4 + [(1, 2)] * 23 + [(1, 4)] * 3,
    }),
}


def check_output_stride_plan(output_stride_plan):
    """Lesson 7: TF-slim's ``stack_blocks_dense`` arithmetic, ``output_stride_plan(stem_stride,
    design_strides, output_stride)`` -> one ``(stride, rate)`` per unit, against hand-written
    tables of Xception-65 and ResNet-101 at output strides 32, 16 and 8."""
    for net, (stem, names, table) in _OUTPUT_STRIDE_TABLES.items():
        design = [s for s, _ in table[32]]
        for output_stride, expected in table.items():
            got = _attempt(output_stride_plan, stem, design, output_stride)
            if got is None:
                return _not_done("output_stride_plan")
            where = f"{net} at output stride {output_stride}"
            assert len(got) == len(expected), \
                f"{where}: {len(got)} (stride, rate) pairs for {len(expected)} units"
            for k, (g, e, name) in enumerate(zip(got, expected, names)):
                g = tuple(int(v) for v in g)
                assert g == e, (f"{where}: unit {k + 1} ({name}) has (stride, rate) {g}, "
                                f"expected {e}")
    print("output_stride_plan: matches the hand tables of Xception-65 and ResNet-101 at output "
          "strides 32, 16 and 8")
    return PASSED


def _run_on_emu(path, kernel, args, **grid):
    """``kernels.launch`` on ``emu`` in checking mode, its failures as AssertionErrors."""
    try:
        with runner.check_mode():
            launch(mdl.get_device("emu"), path, kernel, args, **grid)
    except runner.KernelError as e:  # a read or write past an array, a deadlock
        raise AssertionError(f"the kernel failed on emu in checking mode: {e}") from None
    except RuntimeError as e:  # g++'s errors
        raise AssertionError(f"compile: {e}") from None
    except (LookupError, TypeError, ValueError) as e:  # no such kernel, wrong parameters
        raise AssertionError(f"launch: {e}") from None


def check_scale_shift_kernel(source):
    """Lesson 9: CUDA source defining ``scale_shift_forward(const real* x, const real* s, const
    real* b, real* y, int C, int L, int n)``, y = x * s[c] + b[c] on contiguous (N, C, L) arrays,
    compiled and run on ``emu`` in checking mode, against NumPy: with the grid of ``n`` elements,
    then with one block for more than ``BLOCK`` elements (the grid-stride loop)."""
    if source is None:
        return _not_done("scale_shift_forward")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scale_shift.cu"
        path.write_text(source)
        for shape, grid in (((2, 3, 5, 7), {}), ((2, 3, 9, 11), {"grid": 1})):
            x, s, b = (rng.standard_normal(shape), rng.standard_normal(shape[1]),
                       rng.standard_normal(shape[1]))
            y = np.full(shape, np.nan)  # an element never written stays NaN
            n, (c, length) = x.size, (shape[1], shape[2] * shape[3])
            _run_on_emu(path, "scale_shift_forward", (x, s, b, y, c, length, n),
                        **(grid or {"n": n}))
            launched = ("one block of BLOCK threads" if grid else "a grid of n elements")
            try:
                _first_difference(f"y on {shape} with {launched} (index: image, channel, row, "
                                  f"column)", y, x * s[:, None, None] + b[:, None, None])
            except AssertionError as e:
                hint = (f"; only the first {BLOCK} were written: a grid-stride loop covers any "
                        f"size with any grid" if grid and np.isnan(y).sum() == n - BLOCK else "")
                raise AssertionError(f"{e}{hint}") from None
    print("scale_shift_forward: matches NumPy on emu in checking mode, with a grid of n elements "
          f"and with one block of {BLOCK} threads for {2 * 3 * 9 * 11} elements")
    return PASSED


def _relu(z):
    return np.maximum(z, 0)


def _aspp_branches(x, w_pool, w_1x1, w_atrous, rates):
    """The five branch outputs in NumPy: einsum for the 1x1 convs, SciPy for the atrous ones,
    the image pooling's vector repeated at every pixel."""
    pooled = _relu(np.einsum("oc,nc->no", w_pool[:, :, 0, 0], x.mean(axis=(2, 3))))
    return ([np.broadcast_to(pooled[:, :, None, None], (len(x), len(w_pool)) + x.shape[2:]),
             _relu(np.einsum("oc,nchw->nohw", w_1x1[:, :, 0, 0], x))]
            + [_relu(_atrous_reference(x, w, r)) for w, r in zip(w_atrous, rates)])


def check_aspp(aspp_forward):
    """Lesson 5: ASPP without BN from the functional ops, ``aspp_forward(x, w_pool, w_1x1,
    w_atrous, w_project, rates)`` -> Tensor, against the branches computed in NumPy and SciPy,
    then its gradient with respect to ``x`` by ``check_backward`` (it must stay one graph)."""
    rng = np.random.default_rng(0)
    rates = (2, 3, 9)  # 9: wider than the 7x6 map, only the centre tap reads it
    # Channel means far from 0, so that the image pooling's ReLU lets its vector (and its
    # gradient) through: a pooled branch of zeros would hide every mistake in it.
    x = rng.standard_normal((2, 3, 7, 6)) + np.array([1.0, -1.0, 0.5])[:, None, None]
    w_pool, w_1x1 = rng.standard_normal((2, 3, 1, 1)), rng.standard_normal((2, 3, 1, 1))
    w_atrous = [rng.standard_normal((2, 3, 3, 3)) for _ in rates]
    w_project = rng.standard_normal((2, 10, 1, 1))
    weights = [mdl.Tensor(w_pool), mdl.Tensor(w_1x1), [mdl.Tensor(w) for w in w_atrous],
               mdl.Tensor(w_project)]
    y = _attempt(aspp_forward, mdl.Tensor(x), *weights, rates)
    if y is None:
        return _not_done("aspp_forward")
    assert isinstance(y, mdl.Tensor), \
        f"aspp_forward must return a Tensor (from the functional ops), got {type(y).__name__}"
    branches = _aspp_branches(x, w_pool, w_1x1, w_atrous, rates)

    def project(parts):
        return _relu(np.einsum("oc,nchw->nohw", w_project[:, :, 0, 0], np.concatenate(parts, 1)))

    expected = project(branches)
    _same_shape("the output", y.numpy(), expected.shape)
    try:
        _first_difference("the output (index: image, channel, row, column)", y.numpy(), expected)
    except AssertionError as e:
        hint = ("; the branches go in the official order: image pooling, 1x1, then the rates"
                if np.allclose(y.numpy(), project(branches[1:] + branches[:1])) else "")
        raise AssertionError(f"{e}{hint}") from None
    try:
        check_backward(lambda t: aspp_forward(t, *weights, rates), [x])
    except AssertionError as e:
        raise AssertionError(f"{e}; the values are right, so some step left the graph: every step "
                             "must be a functional op on Tensors, not a detour through NumPy") \
            from None
    print(f"aspp_forward: matches NumPy and SciPy at rates {rates}, and its gradient with respect "
          "to x matches central differences")
    return PASSED


def _bilinear_reference(x, size, align_corners=True):
    """Bilinear resize of NCHW ``x`` from its definition, one output pixel at a time: the source
    point (corner pixels aligned, or pixel centres as PyTorch's ``align_corners=False``), its four
    neighbours and their weights."""
    def source(o, n_in, n_out):
        if align_corners:
            s = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), s - i0

    (h, w), out = x.shape[2:], np.zeros(x.shape[:2] + tuple(size))
    for r in range(size[0]):
        r0, r1, a = source(r, h, size[0])
        for c in range(size[1]):
            c0, c1, b = source(c, w, size[1])
            out[:, :, r, c] = ((1 - a) * (1 - b) * x[:, :, r0, c0] + (1 - a) * b * x[:, :, r0, c1]
                               + a * (1 - b) * x[:, :, r1, c0] + a * b * x[:, :, r1, c1])
    return out


def _decoder_reference(features, low_level, w_reduce, w_refine1, w_refine2, w_logits, out_size,
                       encoder_first=True, align_corners=(True, True), relus=(True, True, True),
                       logits_relu=False):
    """The decoder in NumPy and SciPy; the keywords build the mistakes the grader names."""
    def relu_if(on, z):
        return _relu(z) if on else z

    low = relu_if(relus[0], np.einsum("oc,nchw->nohw", w_reduce[:, :, 0, 0], low_level))
    up = _bilinear_reference(features, low.shape[2:], align_corners[0])
    y = np.concatenate([up, low] if encoder_first else [low, up], axis=1)
    y = relu_if(relus[1], _atrous_reference(y, w_refine1, 1))
    y = relu_if(relus[2], _atrous_reference(y, w_refine2, 1))
    logits = relu_if(logits_relu, np.einsum("oc,nchw->nohw", w_logits[:, :, 0, 0], y))
    return _bilinear_reference(logits, out_size, align_corners[1])


_DECODER_MISTAKES = [  # keywords of _decoder_reference -> what the learner is told
    ({"encoder_first": False}, "the encoder features go first in the concatenation, then the "
                               "reduced low-level ones (model.py refine_by_decoder)"),
    ({"align_corners": (False, True)}, "the encoder features are upsampled with "
                                       "align_corners=False; DeepLab uses align_corners=True"),
    ({"align_corners": (True, False)}, "the logits are upsampled with align_corners=False; "
                                       "DeepLab uses align_corners=True"),
    ({"relus": (False, True, True)}, "the 1x1 reduction of the low-level features is followed "
                                     "by a ReLU"),
    ({"relus": (True, False, True)}, "the first 3x3 conv is followed by a ReLU"),
    ({"relus": (True, True, False)}, "the second 3x3 conv is followed by a ReLU"),
    ({"logits_relu": True}, "no ReLU after the logits conv: logits are scores of any sign"),
]


def check_decoder(decoder_forward):
    """Lesson 6: the DeepLabv3+ decoder without BN from the functional ops,
    ``decoder_forward(features, low_level, w_reduce, w_refine1, w_refine2, w_logits, out_size)``
    -> logits Tensor of ``out_size``, against NumPy (einsum for the 1x1 convs, bilinear resizing
    written from its definition) and SciPy (the 3x3 convs), then its gradient with respect to
    both inputs by ``check_backward`` (it must stay one graph)."""
    rng = np.random.default_rng(0)
    # Stride-4 low-level features of a stride-8 encoder output (3x4 -> 5x7: the align-corners
    # sizes (h - 1) * 2 + 1), logits upsampled to a 17x25 "image"; channels few, all distinct.
    features, low_level = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 4, 5, 7))
    w_reduce = rng.standard_normal((2, 4, 1, 1))
    w_refine1, w_refine2 = rng.standard_normal((3, 5, 3, 3)), rng.standard_normal((3, 3, 3, 3))
    w_logits, out_size = rng.standard_normal((2, 3, 1, 1)), (17, 25)
    weights = [w_reduce, w_refine1, w_refine2, w_logits]
    tensors = [mdl.Tensor(w) for w in weights]
    y = _attempt(decoder_forward, mdl.Tensor(features), mdl.Tensor(low_level), *tensors, out_size)
    if y is None:
        return _not_done("decoder_forward")
    assert isinstance(y, mdl.Tensor), \
        f"decoder_forward must return a Tensor (from the functional ops), got {type(y).__name__}"
    expected = _decoder_reference(features, low_level, *weights, out_size)
    _same_shape("the output (the logits at out_size)", y.numpy(), expected.shape)
    try:
        _first_difference("the output (index: image, class, row, column)", y.numpy(), expected)
    except AssertionError as e:
        hints = [hint for mistake, hint in _DECODER_MISTAKES
                 if np.allclose(y.numpy(), _decoder_reference(features, low_level, *weights,
                                                              out_size, **mistake))]
        raise AssertionError("; ".join([str(e)] + hints)) from None
    try:
        check_backward(lambda f, low: decoder_forward(f, low, *tensors, out_size),
                       [features, low_level])
    except AssertionError as e:
        raise AssertionError(f"{e}; the values are right, so some step left the graph: every step "
                             "must be a functional op on Tensors, not a detour through NumPy") \
            from None
    print("decoder_forward: matches NumPy and SciPy (3x4 encoder and 5x7 low-level features to "
          f"{out_size[0]}x{out_size[1]} logits), and its gradient with respect to both inputs "
          "matches central differences")
    return PASSED


# poly_lr(base_lr, it, max_it, power) written out by hand. The run's schedule (lr 0.3, 2000
# iterations, power 0.9) at its first, second, middle and last iterations and past its end
# (TensorFlow's polynomial_decay clamps the step to max_it: the lr stays 0); then powers 1 and 2
# on 4 iterations, where every value is a fraction: (3/4) ** 2 = 0.5625.
_POLY_TABLE = [
    ((0.3, 0, 2000, 0.9), 0.3),
    ((0.3, 1, 2000, 0.9), 0.299864996624),  # 0.3 * 0.9995 ** 0.9
    ((0.3, 1000, 2000, 0.9), 0.16076601938),  # 0.3 * 0.5 ** 0.9
    ((0.3, 1999, 2000, 0.9), 0.000320770379997),  # 0.3 * 0.0005 ** 0.9
    ((0.3, 2000, 2000, 0.9), 0.0),
    ((0.3, 2500, 2000, 0.9), 0.0),
    ((1.0, 1, 4, 1), 0.75), ((1.0, 2, 4, 1), 0.5), ((1.0, 3, 4, 1), 0.25),
    ((1.0, 1, 4, 2), 0.5625), ((1.0, 2, 4, 2), 0.25), ((1.0, 3, 4, 2), 0.0625),
]


def _poly_hint(base_lr, it, max_it, power, got):
    """Why ``got`` may be wrong at this row: the mistakes a learner makes with the formula."""
    def near(v):
        return got is not None and np.isclose(got, v, rtol=1e-9, atol=0)
    if it == 0:
        return "the first iteration, it = 0, runs at base_lr"
    if it > max_it:
        return "past max_it the lr stays 0 (TensorFlow's polynomial_decay clamps it to max_it)"
    if near(base_lr * (1 - (it + 1) / max_it) ** power):
        return "that is the lr of iteration it + 1: iterations count from 0"
    if near(base_lr * (1 - it / max_it)) and power != 1:
        return "that is the linear schedule: (1 - it / max_it) is raised to power"
    if near(base_lr * (1 - it / max_it) ** 0.9):
        return "that is power 0.9: use the power argument"
    if near(base_lr * (1 - (it / max_it) ** power)):
        return "the power applies to (1 - it / max_it), not to it / max_it"
    return ""


def check_poly_lr(poly_lr):
    """Lesson 8: the "poly" learning rate ``poly_lr(base_lr, it, max_it, power=0.9)`` (paper
    Sec. 4), against values written out by hand: the run's schedule at its end points and past its
    end, and powers 1 and 2, where every value is a fraction."""
    for (base_lr, it, max_it, power), expected in _POLY_TABLE:
        got = _attempt(poly_lr, base_lr, it, max_it, power)
        if got is None:
            return _not_done("poly_lr")
        call = f"poly_lr({base_lr}, {it}, {max_it}, power={power})"
        try:
            value = float(got)  # a complex number (a negative base ** 0.9) does not convert
        except TypeError:
            value = None
        if value is None or not np.isclose(value, expected, rtol=1e-9, atol=1e-15):
            hint = _poly_hint(base_lr, it, max_it, power, value)
            raise AssertionError(f"value: {call} = {got!r}, expected {expected!r}"
                                 + (f"; {hint}" if hint else ""))
    print(f"poly_lr: matches {len(_POLY_TABLE)} values written out by hand (lr 0.3 over 2000 "
          "iterations at power 0.9, its end points and past its end; powers 1 and 2)")
    return PASSED


def _xent_reference(logits, labels, ignore_index=255):
    """Mean over the counted pixels of log-sum-exp(z) - z[label], one pixel at a time in Python
    floats (the max taken out of the sum, so exp never overflows); 0 when none is counted."""
    total, count = 0.0, 0
    n, _, h, w = logits.shape
    for i, r, c in np.ndindex(n, h, w):
        if labels[i, r, c] == ignore_index:
            continue
        z = [float(v) for v in logits[i, :, r, c]]
        m = max(z)
        total += m + math.log(math.fsum(math.exp(v - m) for v in z)) - z[labels[i, r, c]]
        count += 1
    return total / count if count else 0.0


def _xent_cases():
    """(what, logits, labels): labels without 255; with 255 scattered and one image all 255;
    logits near 1000 (exp overflows float64 past 709); every pixel 255."""
    rng = np.random.default_rng(0)
    shape = (3, 4, 3, 5)
    labels = rng.integers(0, 4, (3, 3, 5))
    ignored = labels.copy()
    ignored[rng.random(labels.shape) < 0.3] = 255
    ignored[1] = 255
    return [("a batch without label 255", rng.standard_normal(shape) * 2, labels),
            ("a batch with label 255 on some pixels and on all of image 1",
             rng.standard_normal(shape) * 2, ignored),
            ("logits near 1000 (with label 255 as above)", 1000 + 30 * rng.standard_normal(shape),
             ignored),
            ("a batch whose every pixel is 255", rng.standard_normal(shape),
             np.full(labels.shape, 255))]


def check_ignore_label_loss(softmax_cross_entropy_np):
    """Lesson 8: ``softmax_cross_entropy_np(logits, labels, ignore_index=255)`` -> (loss, gradient
    with respect to the logits) in NumPy: the mean over the pixels whose label is not 255 of
    -log softmax(logits)[label], against a loop over pixels with log-sum-exp, its gradient
    against central differences of that loop; on a batch with an image all 255, logits near 1000
    and a batch with no pixel counted (loss 0, gradient 0)."""
    for what, logits, labels in _xent_cases():
        got = _attempt(softmax_cross_entropy_np, logits.copy(), labels.copy())
        if got is None:
            return _not_done("softmax_cross_entropy_np")
        assert isinstance(got, tuple) and len(got) == 2, \
            f"softmax_cross_entropy_np must return (loss, grad), got {type(got).__name__}"
        loss, grad = float(got[0]), np.asarray(got[1])
        valid = labels != 255
        expected = _xent_reference(logits, labels)
        if not np.isfinite(loss):
            hint = ("; with no pixel counted the loss is 0 (and the gradient 0), not 0 / 0"
                    if not valid.any() else
                    "; subtract each pixel's largest logit before exp (log-sum-exp)"
                    if logits.max() > 700 else "")
            raise AssertionError(f"value: the loss on {what} is {loss}, expected {expected:.6g}"
                                 f"{hint}")
        if not np.isclose(loss, expected, rtol=1e-9, atol=1e-12):
            all_pixels = expected * valid.sum() / valid.size
            hint = ("; that is the mean over all pixels: divide by the number of pixels whose "
                    "label is not 255" if np.isclose(loss, all_pixels, rtol=1e-9) else "")
            raise AssertionError(f"value: the loss on {what} is {loss:.10g}, expected "
                                 f"{expected:.10g}{hint}")
        _same_shape(f"the gradient on {what}", grad, logits.shape)
        # eps 1e-4: the rounding of a loss near 1000 stays far below the tolerance
        numeric = _central_differences(lambda z, lab=labels: np.array(_xent_reference(z, lab)),
                                       [logits], 1.0, eps=1e-4)[0]
        try:
            _first_difference(f"the gradient on {what} (index: image, class, row, column)", grad,
                              numeric, rtol=1e-5, atol=1e-7)
        except AssertionError as e:
            hint = ""
            off = ~np.isclose(grad, numeric, rtol=1e-5, atol=1e-7)
            if (off & valid[:, None]).sum() == 0:
                hint = "; wrong only on pixels labelled 255: they take no part, gradient 0"
            elif np.allclose(grad, numeric * max(int(valid.sum()), 1), rtol=1e-5, atol=1e-7):
                hint = ("; that is the gradient of the sum: the loss is a mean over the counted "
                        "pixels, so is its gradient")
            raise AssertionError(f"{e}{hint}") from None
    print("softmax_cross_entropy_np: the loss matches a loop over pixels with log-sum-exp and the "
          "gradient central differences, with label 255 on all of one image, logits near 1000 "
          "and no pixel counted")
    return PASSED


# -- lesson 11: DeepLabv3+ wired by hand from the package's blocks --------------------------------
_LAST_GRADED = [None, None]  # [function, verdict] of the last check_deeplabv3plus_forward


def passed(fn):
    """Whether ``fn`` is the function that check_deeplabv3plus_forward graded last and it passed
    (lesson 11 trains the learner's forward only then)."""
    return _LAST_GRADED[0] is fn and _LAST_GRADED[1] == PASSED


def _capstone_stages(net):
    """(block, what feeds it) for every block DeepLabv3+'s forward calls, in the package's order."""
    features = "the backbone's features"
    return [("aspp.image_pooling", "the global average of the backbone's features"),
            ("aspp.conv1x1", features),
            *((f"aspp.atrous.{i}", features) for i in range(len(net.aspp.atrous))),
            ("aspp.project", "the ASPP branches concatenated"),
            ("aspp.dropout", "the projected ASPP output"),
            ("decoder.low_level", "the backbone's low-level end point"),
            ("decoder.refine.0", "the ASPP output upsampled to the low-level size, concatenated "
                                 "with the reduced low-level features"),
            ("decoder.refine.1", "the first 3x3 conv's output"),
            ("logits", "the decoder's output")]


def _capstone_hint(name, got, record):
    """Why the input of block ``name`` differs, where a common mistake explains it."""
    expected = record[name][0]
    if name == "aspp.project":
        c = record["aspp.conv1x1"][1].shape[1]
        n = expected.shape[1] // c
        if got.shape[1] != expected.shape[1]:
            return (f"; {got.shape[1] // c} branches of {c} channels, expected {n}: image "
                    f"pooling, 1x1, then the {n - 2} atrous convs")
        labels = ["image pooling", "1x1", *(f"atrous {i}" for i in range(n - 2))]
        found = [next((lab for j, lab in enumerate(labels) if np.allclose(
                           got[:, i * c:(i + 1) * c], expected[:, j * c:(j + 1) * c], 1e-4, 1e-4)),
                      "?") for i in range(n)]
        if found != labels and "?" not in found:
            return (f"; the branches are concatenated as ({', '.join(found)}): the official order "
                    "is image pooling, 1x1, then the rates")
    if name == "decoder.refine.0" and got.shape == expected.shape:
        aspp_out = record["aspp.dropout"][1]
        c = aspp_out.shape[1]
        if np.allclose(got, np.concatenate([expected[:, c:], expected[:, :c]], 1), 1e-4, 1e-4):
            return ("; the low-level features come first: the upsampled ASPP output goes first "
                    "(model.py refine_by_decoder)")
        unaligned = F.resize_bilinear(mdl.Tensor(aspp_out), got.shape[2:],
                                      align_corners=False).numpy()
        if np.allclose(got[:, :c], unaligned, 1e-4, 1e-4):
            return ("; the ASPP output is upsampled with align_corners=False: the official code "
                    "resizes with align_corners=True (corner pixels on corner pixels)")
        part = (f"the first {c} channels (the upsampled ASPP output)"
                if not np.allclose(got[:, :c], expected[:, :c], 1e-4, 1e-4) else
                f"the last {got.shape[1] - c} channels (the reduced low-level features)")
        return f"; {part} differ"
    if name == "logits" and got.shape[2:] == record["aspp.dropout"][1].shape[2:] \
            and got.shape[2:] != expected.shape[2:]:
        return ("; it has the ASPP output's size, as if the decoder were skipped: the decoder "
                "refines it at the low-level features' size (stride 4) first")
    return ""


def _watched_pass(net, fn, x, stages, record=None):
    """``fn(net, x)`` with the forward of every block of ``stages`` wrapped. Without ``record``:
    returns (output, record), record[block] = (its input, its output) as NumPy. With ``record``:
    each block first compares its input with the recorded one (AssertionError naming the block
    and what feeds it), calling net, net.aspp or net.decoder as a whole is refused, and each block
    must run once; returns the output."""
    modules = {name.rstrip("."): m for name, m in net.named_modules()}
    calls, seen = {}, {}
    what = dict(stages)

    def wrap(name, module):
        def forward(x, *args, **kwargs):
            if record is not None:
                if not isinstance(x, mdl.Tensor):
                    raise AssertionError(f"the input of net.{name} is a {type(x).__name__}, not a "
                                         "Tensor: every step must stay in the graph")
                got, expected = x.numpy(), record[name][0]
                try:
                    _same_shape(f"the input of net.{name}", got, expected.shape)
                    _first_difference(f"the input of net.{name} (index: image, channel, row, "
                                      "column)", got, expected, rtol=1e-4, atol=1e-4)
                except AssertionError as e:
                    raise AssertionError(f"{e}. That input is {what[name]}"
                                         f"{_capstone_hint(name, got, record)}") from None
            calls[name] = calls.get(name, 0) + 1
            y = type(module).forward(module, x, *args, **kwargs)
            seen[name] = (x.numpy().copy(), y.numpy().copy())
            return y
        return forward

    def refuse(name):
        def forward(*args, **kwargs):
            raise AssertionError(f"deeplabv3plus_forward calls net{'.' if name else ''}{name}(...) "
                                 "as a whole: wire its blocks by hand (the exercise)")
        return forward

    wrapped = [(modules[name], wrap(name, modules[name])) for name, _ in stages]
    if record is not None:
        wrapped += [(modules[name], refuse(name)) for name in ("", "aspp", "decoder")]
    for module, forward in wrapped:
        module.forward = forward
    try:
        y = fn(net, x)
    finally:
        for module, _ in wrapped:
            del module.forward
    if record is None:
        return y, seen
    for name, _ in stages:
        if calls.get(name, 0) != 1:
            why = (": in training mode it zeroes 10% of the projected ASPP output (in eval mode "
                   "it passes it through, so the values cannot show it)"
                   if name == "aspp.dropout" else f" (its input: {what[name]})")
            raise AssertionError(f"net.{name} was called {calls.get(name, 0)} times, expected "
                                 f"once{why}")
    return y


def _capstone_grads(net, y, labels):
    for p in net.parameters():
        p.grad = None
    F.softmax_cross_entropy(y, labels).backward()
    return {k: None if p.grad is None else p.grad.copy() for k, p in net.named_parameters()}


def _compare_grads(got, expected):
    """AssertionError naming the parameter nearest the output whose gradient is wrong."""
    wrong = []
    for k, e in expected.items():
        g = got[k]
        if g is None or g.shape != e.shape or not np.allclose(
                g, e, rtol=1e-3, atol=1e-3 * np.abs(e).max()):
            wrong.append(k)
    if wrong:
        k = wrong[-1]
        detail = "no gradient" if got[k] is None else "a different one"
        raise AssertionError(f"gradient: {len(wrong)} of {len(expected)} parameters get a wrong "
                             f"gradient; the one nearest the output: net.{k} ({detail}): the "
                             "values are right, so some step after it left the graph (a detour "
                             "through NumPy?)")


def check_deeplabv3plus_forward(deeplabv3plus_forward):
    """Lesson 11: DeepLabv3+'s forward wired by hand, ``deeplabv3plus_forward(net, x)``, against
    the package's ``net(x)`` with the default run's trained weights (lessons/trained.py) on val
    images: eval mode at output stride 8, 16 and on a non-square crop, then training mode (batch
    statistics, dropout) with the gradient of every parameter. Each block's input is compared as
    it is called, so the message names the first stage that differs."""
    _LAST_GRADED[:] = [deeplabv3plus_forward, "failed"]
    # One BLAS thread, as train.py's default --threads: the model's GEMMs are small, and busy-
    # waiting BLAS threads make them several times slower on shared cores.
    with threadpool_limits(1):
        verdict = _grade_deeplabv3plus_forward(deeplabv3plus_forward)
    _LAST_GRADED[1] = verdict
    return verdict


def _grade_deeplabv3plus_forward(deeplabv3plus_forward):
    import trained  # lessons/trained.py, next to this file
    from minideeplab.experiment import build_dataset, eval_loader, load_model

    net, meta = load_model(str(trained.ensure()["deeplabv3plus"] / "checkpoint.npz"), "cpu")
    images, labels = next(iter(eval_loader(build_dataset(split="val", **meta["data"]), 4,
                                           prefetch=0)))
    stages = _capstone_stages(net)
    cases = [(8, images), (16, images), (8, images[..., :, 8:57])]
    for k, (stride, x) in enumerate(cases):
        net.set_output_stride(stride)
        where = (f"eval mode, output stride {stride}, {len(x)} val images of "
                 f"{x.shape[2]}x{x.shape[3]}")
        expected, record = _watched_pass(net, lambda n, t: n(t), mdl.Tensor(x), stages)
        try:
            y = _watched_pass(net, deeplabv3plus_forward, mdl.Tensor(x), stages, record)
        except NotImplementedError:
            if k == 0:
                return _not_done("deeplabv3plus_forward")
            raise
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
        if y is None and k == 0:
            return _not_done("deeplabv3plus_forward")
        assert isinstance(y, mdl.Tensor), \
            f"{where}: deeplabv3plus_forward must return a Tensor, got {type(y).__name__}"
        got, expected = y.numpy(), expected.numpy()
        try:
            _same_shape("the output (the logits at the input size)", got, expected.shape)
            _first_difference("the output (index: image, class, row, column)", got, expected,
                              rtol=1e-4, atol=1e-4)
        except AssertionError as e:
            logits = mdl.Tensor(record["logits"][1])
            unaligned = F.resize_bilinear(logits, x.shape[2:], align_corners=False).numpy()
            hint = ("; the logits are upsampled with align_corners=False: the official code "
                    "resizes with align_corners=True" if got.shape == unaligned.shape
                    and np.allclose(got, unaligned, 1e-4, 1e-4) else "")
            raise AssertionError(f"{where}: {e}{hint}") from None
    # Training mode: BN normalises with the batch's statistics and dropout is on (the same masks
    # from the same seed); BN's moving averages are put back after each pass.
    net.set_output_stride(8).train()
    state = net.state_dict()
    where = f"training mode, output stride 8, {len(images)} val images"

    def train_pass(fn, record=None):
        F.seed(11)
        out = _watched_pass(net, fn, mdl.Tensor(images), stages, record)
        y, record = out if record is None else (out, record)
        result = y.numpy(), _capstone_grads(net, y, labels), record
        net.load_state_dict(state)
        return result

    expected, expected_grads, record = train_pass(lambda n, t: n(t))
    try:
        got, grads, _ = train_pass(deeplabv3plus_forward, record)
        _first_difference("the output (index: image, class, row, column)", got, expected,
                          rtol=1e-4, atol=1e-4)
        _compare_grads(grads, expected_grads)
    except AssertionError as e:
        raise AssertionError(f"{where}: {e}") from None
    print("deeplabv3plus_forward: matches the package's DeepLabv3+ with the trained weights on val "
          "images, block by block, in eval mode at output stride 8 and 16 and on a 65x49 crop, "
          "and in training mode (BN batch statistics, dropout) with every parameter's gradient")
    return PASSED


# -- lesson 10: the depthwise tile width, on the host and in the kernels ----------------------

class _EmuAtMacros(Emu):
    """``emu``, building each ``.cu`` file once for each value of ``kernels.MACROS``: the loader
    keeps one module per file, with the macros in force when it was built."""

    def __init__(self):
        self._built = {}

    def module(self, family, dtype):
        key = (str(family), np.dtype(dtype), tuple(loader.MACROS.items()))
        if key not in self._built:
            self._built[key] = self.build(loader.read_source(family, dtype))
        return self._built[key]


_EMU_AT_MACROS = _EmuAtMacros()


def _tile_state():
    """(the width the kernels are built with, the host's tile columns, its thread rows)."""
    return loader.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY


def _tile_names(state):
    return "kernels.MACROS['DW_TW'], conv.DW_TW, conv.DW_TY = {}, {}, {}".format(*state)


def _tiled_depthwise_on_emu():
    """The tiled depthwise kernels (forward, backward to the input and to the weights) on emu in
    checking mode against the NumPy path, on a 9x40 map that tiles of different widths cover
    with different numbers of tiles; the host picks the rows and sizes the grid and the weight
    gradient's partial sums."""
    rng = np.random.default_rng(0)
    g = conv._geometry((2, 2, 9, 40), (2, 1, 3, 3), None, 1, 2, 2, 2)  # rate 2, "same"
    x, w = rng.standard_normal((2, 2, 9, 40)), rng.standard_normal((2, 1, 3, 3))
    gy = rng.standard_normal((2, 2, g.Ho, g.Wo))
    numpy = conv.DepthwiseConv2d(g)
    numpy.dev, numpy.needs_grad = mdl.get_device("cpu"), (True, True)
    expected = (numpy.forward_cpu(x, w), *numpy.backward_cpu(gy)[:2])
    op = conv.DepthwiseConv2d(g)
    op.dev, op.needs_grad = _EMU_AT_MACROS, (True, True)
    try:
        with runner.check_mode():
            got = (op.forward_kernel(x, w), *op.backward_kernel(gy)[:2])
    except runner.KernelError as e:
        raise AssertionError(f"the kernels failed on emu in checking mode: {e}") from None
    for what, a, b in zip(("y", "the input gradient", "the weight gradient"), got, expected):
        _first_difference(f"{what} on emu", a, b, rtol=1e-10, atol=1e-10)


class _Raised(Exception):
    pass


def _raise():
    raise _Raised("raised inside run()")


def check_tile_width(with_tile_width):
    """Lesson 10: ``with_tile_width(tw, run)`` runs ``run()`` with depthwise tiles ``tw`` columns
    wide on the host (``conv.DW_TW``, ``conv.DW_TY = BLOCK // tw``) and in the kernels
    (``kernels.MACROS['DW_TW']``, handed to the compiler), returns its result and puts the old
    values back, also when ``run`` raises. Graded by the tiled kernels on emu in checking mode
    against the NumPy path at 16, 8 and 64 columns, then by the values themselves."""
    saved, macros = _tile_state(), kernels.MACROS
    widths = (16, 8, 64)  # not 32, the width already in force
    seen = []  # the state inside each run()

    def run():
        seen.append(_tile_state())
        _tiled_depthwise_on_emu()
        return "result of run()"
    try:
        for tw in widths:
            seen.clear()
            want = (tw, tw, BLOCK // tw)
            try:
                result = with_tile_width(tw, run)
            except NotImplementedError:
                if seen:
                    raise
                return _not_done("with_tile_width")
            except AssertionError as e:  # from the kernels on emu, inside run()
                inside = (f". Inside, {_tile_names(seen[-1])}, expected {want}: the host and the "
                          "kernels must tile alike" if seen and seen[-1] != want else "")
                raise AssertionError(f"with_tile_width({tw}, run): {e}{inside}") from None
            assert seen, f"with_tile_width({tw}, run) did not call run()"
            assert seen[-1] == want, (
                f"with_tile_width({tw}, run): inside, {_tile_names(seen[-1])}, expected {want} "
                "(the kernels agreed with NumPy on this map all the same)")
            assert result == "result of run()", \
                f"with_tile_width({tw}, run) returned {result!r}, not what run() returned"
            assert _tile_state() == saved, (
                f"after with_tile_width({tw}, run) returned, {_tile_names(_tile_state())}; "
                f"expected the old {saved} back")
        try:
            with_tile_width(16, _raise)
            raise AssertionError("with_tile_width(16, run) swallowed the exception run() raised")
        except _Raised:
            pass
        assert _tile_state() == saved, (
            f"after run() raised inside with_tile_width(16, run), {_tile_names(_tile_state())}; "
            f"expected the old {saved} back, also then (try/finally)")
    finally:  # whatever the learner's code left behind
        kernels.MACROS = macros
        macros["DW_TW"], conv.DW_TW, conv.DW_TY = saved
    print(f"with_tile_width: the tiled depthwise kernels match NumPy on emu in checking mode with "
          f"tiles {', '.join(map(str, widths))} columns wide, and the old width is back after "
          "each call, also when run() raises")
    return PASSED
