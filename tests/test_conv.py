"""Convolutions against independent references: naive loops, SciPy on a zero-inserted kernel, and
cross-op identities (ARCHITECTURE.md s. 10). Shapes stay tiny: the emu device runs every kernel on
the CPU."""
import numpy as np
import pytest
import scipy.signal

import minideeplab as mdl
import minideeplab.functional as F
from minideeplab import threads
from minideeplab.device import get_device
from minideeplab.functional import conv
from tests.conftest import assert_close

rng = np.random.default_rng(0)


def naive_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Seven nested loops straight from the definition (cross-correlation, zero padding)."""
    (sh, sw), (ph, pw), (dh, dw) = [(v, v) if np.isscalar(v) else v
                                    for v in (stride, padding, dilation)]
    N, C, H, W = x.shape
    Cout, cg, kh, kw = w.shape
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, Cout, Ho, Wo))
    per_group = Cout // groups
    for n in range(N):
        for co in range(Cout):
            for ho in range(Ho):
                for wo in range(Wo):
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                h, v = ho * sh - ph + i * dh, wo * sw - pw + j * dw
                                if 0 <= h < H and 0 <= v < W:
                                    c = co // per_group * cg + ci
                                    y[n, co, ho, wo] += x[n, c, h, v] * w[co, ci, i, j]
            if b is not None:
                y[n, co] += b[co]
    return y


def run(device, x, w, b=None, **kw):
    t = lambda a: None if a is None else mdl.Tensor(a, device=device)  # noqa: E731
    return F.conv2d(t(x), t(w), t(b), **kw).numpy()


def check(actual, expected, dtype):
    # float32: each output sums Cin*kh*kw products of O(1) values with cancellation, hence the
    # long-reduction tolerance; float64 uses the strict one.
    assert_close(actual, expected, kind="float32_long" if dtype == np.float32 else np.dtype(dtype))


# (x shape, w shape, conv2d keywords, with bias)
CASES = {
    "dense": ((2, 3, 6, 5), (4, 3, 3, 3), {}, True),
    "dense_padded_batch1": ((1, 2, 5, 5), (3, 2, 3, 3), dict(padding=1), False),
    "strided_padded_odd": ((2, 2, 7, 9), (3, 2, 3, 3), dict(stride=2, padding=1), True),
    "atrous": ((1, 2, 9, 8), (2, 2, 3, 3), dict(padding=2, dilation=2), True),
    "pairs": ((1, 2, 8, 9), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 3)),
              True),
    "grouped": ((2, 4, 5, 5), (6, 2, 3, 3), dict(padding=1, groups=2), True),
    "depthwise_atrous_strided": ((2, 3, 7, 7), (3, 1, 3, 3),
                                 dict(stride=2, padding=2, dilation=2, groups=3), True),
    "depthwise_multiplier": ((1, 2, 5, 6), (4, 1, 3, 3), dict(padding=1, groups=2), True),
    "pointwise": ((2, 3, 4, 5), (4, 3, 1, 1), {}, True),
    "pointwise_strided": ((1, 3, 5, 5), (2, 3, 1, 1), dict(stride=2), False),
    "padding_without_taps": ((1, 2, 3, 3), (2, 2, 1, 1), dict(padding=1), True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_naive_loops(case, dtype, device):
    xs, ws, kw, bias = CASES[case]
    x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    y = run(device, x, w, b, **kw)
    assert y.dtype == dtype
    check(y, naive_conv(x.astype(np.float64), w.astype(np.float64), b, **kw), dtype)


# The NumPy path's two algorithms for dense (and grouped) convs, each on every dense case:
# conv2d picks one from the geometry, so each would otherwise meet only some of them.
DENSE = sorted(c for c in CASES if not c.startswith("depthwise"))


@pytest.mark.parametrize("algorithm", [conv.Conv2d, conv.TapConv2d])
@pytest.mark.parametrize("case", DENSE)
def test_both_numpy_algorithms_match_naive_loops(case, algorithm):
    xs, ws, kw, bias = CASES[case]
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[0]) if bias else None
    g = conv._geometry(xs, ws, None, kw.get("stride", 1), kw.get("padding", 0),
                       kw.get("dilation", 1), kw.get("groups", 1))
    args = [mdl.Tensor(a) for a in (x, w, b) if a is not None]
    check(algorithm(g)(*args).numpy(), naive_conv(x, w, b, **kw), np.float64)


def test_taps_run_where_im2col_would_multiply_much_padding():
    """conv2d's choice: TapConv2d below TAPS_BELOW of im2col's multiply-adds on the image. The
    ASPP's 3x3 at rate 6 on a 17x17 map: the outer taps see 11 of 17 rows (and columns), so
    ((11 + 17 + 11) / 51)^2 = 58% on the image; rate 12: 5 of 17, 28%; at rate 18 only the centre
    tap is live (a 1x1 conv: all on the image). The decoder's 3x3 on 65x65: (64+65+64)/195, 98%."""
    def picked(size, rate, c=512):
        g = conv._geometry((4, c, size, size), (64, c, 3, 3), None, 1, rate, rate, 1)
        return conv._op_class(g), conv._on_image(g, conv._taps(g))

    assert picked(17, 6) == (conv.TapConv2d, pytest.approx((39 / 51) ** 2))
    assert picked(17, 12) == (conv.TapConv2d, pytest.approx((27 / 51) ** 2))
    assert picked(17, 18) == (conv.Conv2d, 1.0)
    assert picked(65, 1, 88) == (conv.Conv2d, pytest.approx((193 / 195) ** 2))
    # the default preset's (crop 65, output stride 8): the decoder at 17x17, ASPP at 9x9
    assert picked(17, 1, 88)[0] is conv.Conv2d and picked(9, 12)[0] is conv.Conv2d


# Stride-1 depthwise convs without a multiplier: the geometries FlatDepthwiseConv2d takes.
FLAT = {
    "atrous": ((2, 3, 7, 8), (3, 1, 3, 3), dict(padding=2, dilation=2, groups=3)),
    "uneven_padding": ((1, 2, 6, 7), (2, 1, 3, 3), dict(padding=(1, 0), groups=2)),
    "rate_beyond_map": ((1, 2, 3, 3), (2, 1, 3, 3), dict(padding=4, dilation=4, groups=2)),
    "pairs": ((2, 2, 5, 5), (2, 1, 3, 2), dict(padding=(1, 2), dilation=(1, 2), groups=2)),
    "no_images": ((0, 2, 5, 5), (2, 1, 3, 3), dict(padding=1, groups=2)),
}


@pytest.mark.parametrize("algorithm", [conv.DepthwiseConv2d, conv.FlatDepthwiseConv2d])
@pytest.mark.parametrize("case", sorted(FLAT))
def test_both_numpy_depthwise_algorithms_match_naive_loops(case, algorithm):
    xs, ws, kw = FLAT[case]
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    g = conv._geometry(xs, ws, None, 1, kw["padding"], kw.get("dilation", 1), kw["groups"])
    y = algorithm(g)(*[mdl.Tensor(a) for a in (x, w, b)]).numpy()
    assert y.shape == naive_conv(x, w, b, **kw).shape
    check(y, naive_conv(x, w, b, **kw), np.float64)


@pytest.mark.parametrize("case", sorted(FLAT))
def test_flat_depthwise_adds_the_same_products_in_the_same_order(case):
    """FlatDepthwiseConv2d's promise: its forward and input gradient are DepthwiseConv2d's, bit
    for bit (a product with padding adds an exact 0)."""
    xs, ws, kw = FLAT[case]
    x, w = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    g = conv._geometry(xs, ws, None, 1, kw["padding"], kw.get("dilation", 1), kw["groups"])
    gy = rng.standard_normal((g.N, g.Cout, g.Ho, g.Wo)).astype(np.float32)
    results = []
    for algorithm in (conv.DepthwiseConv2d, conv.FlatDepthwiseConv2d):
        xt = mdl.Tensor(x, requires_grad=True)
        y = algorithm(g)(xt, mdl.Tensor(w, requires_grad=True))
        y.backward(gy)
        results.append((y.numpy(), xt.grad))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_flat_depthwise_runs_on_wide_stride_one_maps():
    def picked(size, stride=1, multiplier=1, c=32):
        g = conv._geometry((4, c, size, size), (c * multiplier, 1, 3, 3), None, stride, 1, 1, c)
        return conv._op_class(g)

    assert picked(129) is picked(65) is conv.FlatDepthwiseConv2d
    assert picked(129, stride=2) is picked(129, multiplier=2) is conv.DepthwiseConv2d
    assert picked(33) is picked(17, c=182) is conv.DepthwiseConv2d  # the default preset's maps


def zero_inserted(k, rate):
    """The atrous filter as a dense one: rate - 1 zeros between the taps (Sec. 3.1)."""
    kh, kw = k.shape
    d = np.zeros(((kh - 1) * rate + 1, (kw - 1) * rate + 1))
    d[::rate, ::rate] = k
    return d


@pytest.mark.parametrize("rate", [1, 2, 4, 6, 12, 18, 24, 36])
def test_atrous_matches_scipy_zero_inserted_kernel(rate, device):
    """Dense and depthwise 3x3 atrous convs with "same" padding on a 5x5 map; from rate 5 on the
    outer taps fall entirely on padding, as in ASPP at rate 36 on a 33x33 map."""
    x, w = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3))
    pad = lambda a: np.pad(a, rate)  # noqa: E731
    dense = [sum(scipy.signal.correlate(pad(x[0, c]), zero_inserted(w[o, c], rate), mode="valid")
                 for c in range(2)) for o in range(2)]
    depthwise = [scipy.signal.correlate(pad(x[0, c]), zero_inserted(w[c, 0], rate), mode="valid")
                 for c in range(2)]
    X = mdl.Tensor(x, device=device)
    check(F.atrous_conv2d(X, mdl.Tensor(w, device=device), rate=rate).numpy(),
          np.array(dense)[None], np.float64)
    check(F.depthwise_conv2d(X, mdl.Tensor(w[:, :1], device=device), rate=rate).numpy(),
          np.array(depthwise)[None], np.float64)


def test_rate_larger_than_map_keeps_only_the_centre_tap(device):
    """3x3, rate 36, padding 36 on a 5x5 map: every tap but the centre one lands on padding."""
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((3, 1, 3, 3))
    y = F.depthwise_conv2d(mdl.Tensor(x, device=device), mdl.Tensor(w, device=device), rate=36)
    check(y.numpy(), x * w[None, :, 0, 1, 1, None, None], np.float64)


@pytest.mark.parametrize("rate", [1, 2])
def test_depthwise_equals_per_channel_dense_conv(rate, device):
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((3, 1, 3, 3))
    y = F.depthwise_conv2d(mdl.Tensor(x, device=device), mdl.Tensor(w, device=device), rate=rate)
    split = [run(device, x[:, c:c + 1], w[c:c + 1], padding=rate, dilation=rate)
             for c in range(3)]
    check(y.numpy(), np.concatenate(split, axis=1), np.float64)


def test_stride_two_on_odd_sizes(device):
    """13 -> 7 -> 4 through two 3x3 stride-2 convs (padding 1), each against the naive loops."""
    x = rng.standard_normal((1, 2, 13, 13))
    w1, w2 = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 1, 3, 3))
    y1 = run(device, x, w1, stride=2, padding=1)
    y2 = run(device, y1, w2, stride=2, padding=1, groups=2)
    assert y1.shape[2:] == (7, 7) and y2.shape[2:] == (4, 4)
    check(y2, naive_conv(naive_conv(x, w1, stride=2, padding=1), w2, stride=2, padding=1,
                         groups=2), np.float64)


def test_output_size_arithmetic_of_the_paper_crop():
    """513 -> 257 -> 129 -> 65 -> 33 (output strides 2..16) without running the big convs."""
    sizes = [513]
    for _ in range(4):
        sizes.append(F.conv_output_size(sizes[-1], 3, stride=2, padding=1))
    assert sizes == [513, 257, 129, 65, 33]
    # "same" atrous padding keeps the size at every ASPP rate
    assert all(F.conv_output_size(33, 3, 1, r, r) == 33 for r in (6, 12, 18, 24, 36))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_by_one_feature_map(dtype, device):
    """A 1x1 map (image pooling, tiny inputs): a padded 3x3 conv reads its centre tap only."""
    x, w = rng.standard_normal((2, 3, 1, 1)).astype(dtype), rng.standard_normal((4, 3, 3, 3))
    w = w.astype(dtype)
    y = run(device, x, w, padding=6, dilation=6)
    check(y, np.einsum("oc,nc->no", w[:, :, 1, 1], x[:, :, 0, 0])[:, :, None, None], dtype)


def test_separable_is_depthwise_then_pointwise(device):
    x = rng.standard_normal((1, 3, 7, 7))
    wd, wp = rng.standard_normal((3, 1, 3, 3)), rng.standard_normal((5, 3, 1, 1))
    t = lambda a: mdl.Tensor(a, device=device)  # noqa: E731
    y = F.separable_conv2d(t(x), t(wd), t(wp), rate=2, stride=2)
    ref = naive_conv(naive_conv(x, wd, stride=2, padding=2, dilation=2, groups=3), wp)
    assert y.shape == (1, 5, 4, 4)
    check(y.numpy(), ref, np.float64)


ERRORS = {
    "channel mismatch": ((1, 3, 5, 5), (2, 4, 3, 3), {}, r"channel mismatch.*\(1, 3, 5, 5\)"),
    "groups": ((1, 4, 5, 5), (3, 2, 3, 3), dict(groups=2), r"groups=2 must divide.*\(3, 2, 3, 3\)"),
    "too small": ((1, 2, 4, 4), (2, 2, 3, 3), dict(dilation=2),
                  r"\(5, 5\), larger than the padded input \(4, 4\)"),
    "stride": ((1, 2, 5, 5), (2, 2, 3, 3), dict(stride=0), r"stride \(0, 0\)"),
    "32-bit": ((1, 1, 4, 4), (1, 1, 1, 1), dict(stride=2**30, padding=(2**30, 0)),
               r"padded input \(2147483652, 4\) of x \(1, 1, 4, 4\) exceeds the 32-bit"),
    "dilation": ((1, 2, 5, 5), (2, 2, 3, 3), dict(dilation=(1, -1)), r"dilation \(1, -1\)"),
    "bias": ((1, 2, 5, 5), (2, 2, 3, 3), dict(b=np.zeros(3)), r"bias of shape \(3,\)"),
    "dtype": ((1, 2, 5, 5), (2, 2, 3, 3), dict(b=np.zeros(2, np.float32)),
              "conv2d: b has dtype float32 but x float64; an op takes one real dtype"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_clear_errors(case, device):
    xs, ws, kw, match = ERRORS[case]
    with pytest.raises(ValueError, match=match):
        run(device, np.zeros(xs), np.zeros(ws), **kw)


def test_the_numpy_path_reuses_its_column_buffers(monkeypatch):
    """The NumPy path takes its columns and column gradients from conv.BUFFERS (kept across
    steps for arrays above 32 MiB; here for every size) and gives them back once the backward is
    done: a second step reuses them, and its numbers are the first step's, bit for bit."""
    monkeypatch.setattr(conv, "BUFFERS", conv._Buffers(smallest=0))
    monkeypatch.setattr(conv, "TAPS_BELOW", 0)  # im2col (a 3x3 on 9x9 is 73% on the image)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3))
    gy = rng.standard_normal((2, 4, 9, 9))
    results, kept = [], []
    for _ in range(2):
        xt, wt = mdl.Tensor(x, requires_grad=True), mdl.Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, padding=1)
        y.backward(gy)
        results.append([y.numpy(), xt.grad, wt.grad])
        kept.append([id(a) for arrays in conv.BUFFERS.free.values() for a in arrays])
    # The columns and their gradient, a block of it per thread (fewer when a block gives its
    # back before another takes one), kept and reused: the second step adds none.
    assert set(kept[0]) <= set(kept[1])
    assert len(kept[0]) >= 2 and len(kept[1]) <= 1 + min(threads.count(), 3)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert_close(results[0][0], naive_conv(x, w, padding=1))


# An empty batch, no input channels, no output channels: each case of CASES' geometries with one
# of N, C (with Cin/groups and groups kept consistent) or Cout set to 0.
EMPTY = {
    "dense_no_images": ((0, 3, 6, 5), (4, 3, 3, 3), dict(padding=1)),
    "pointwise_no_images": ((0, 3, 4, 5), (4, 3, 1, 1), {}),
    "depthwise_no_images": ((0, 3, 7, 7), (3, 1, 3, 3), dict(padding=1, groups=3)),
    "grouped_no_images": ((0, 4, 5, 5), (6, 2, 3, 3), dict(padding=1, groups=2)),
    "dead_taps_no_images": ((0, 2, 3, 3), (2, 2, 3, 3), dict(padding=4, dilation=4)),
    "no_input_channels": ((2, 0, 5, 5), (4, 0, 3, 3), dict(padding=1)),
    "pointwise_no_input_channels": ((2, 0, 5, 5), (4, 0, 1, 1), {}),
    "no_output_channels": ((2, 3, 5, 5), (0, 3, 3, 3), dict(padding=1)),
    "pointwise_no_output_channels": ((2, 3, 5, 5), (0, 3, 1, 1), {}),
}


@pytest.mark.parametrize("case", sorted(EMPTY))
def test_empty_batches_and_channels(case, device):
    """An empty batch or no channels is no mistake a conv must refuse: the output and every
    gradient are what the definition gives (naive_conv and sums over nothing): empty arrays, the
    bias alone without input channels, zero weight and bias gradients without images."""
    xs, ws, kw = EMPTY[case]
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    ts = [mdl.Tensor(a, requires_grad=True, device=device) for a in (x, w, b)]
    y = F.conv2d(*ts, **kw)
    expected = naive_conv(x, w, b, **kw)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected)
    gy = rng.standard_normal(y.shape)
    y.backward(get_device(device).asarray(gy))
    gx, gw, gb = (get_device("cpu").asarray(t.grad) for t in ts)
    assert (gx.shape, gw.shape, gb.shape) == (xs, ws, (ws[0],))
    np.testing.assert_array_equal(gx, 0 * x)  # a nonempty gx only without output channels
    np.testing.assert_allclose(gb, gy.sum(axis=(0, 2, 3)))
    if xs[0] == 0:
        np.testing.assert_array_equal(gw, np.zeros(ws))  # a sum over no images
