"""Float64 central-difference checks of conv2d for x, w and b on every device (tiny shapes)."""
import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab.functional import conv
from minideeplab.gradcheck import check_backward

rng = np.random.default_rng(0)
normal = lambda *s: rng.standard_normal(s)  # noqa: E731

# (x, w, b shapes, conv2d keywords); every case checks all three inputs element by element.
CASES = {
    "dense": ((2, 2, 4, 4), (3, 2, 3, 3), dict(padding=1)),
    "strided_odd": ((1, 2, 5, 5), (2, 2, 3, 3), dict(stride=2, padding=1)),
    "atrous": ((1, 2, 5, 5), (2, 2, 3, 3), dict(padding=2, dilation=2)),
    "atrous_rate_beyond_map": ((1, 2, 3, 3), (2, 2, 3, 3), dict(padding=4, dilation=4)),
    "depthwise_rate_beyond_map": ((1, 2, 3, 3), (2, 1, 3, 3),
                                  dict(padding=4, dilation=4, groups=2)),
    "depthwise_atrous": ((2, 3, 5, 5), (3, 1, 3, 3), dict(padding=2, dilation=2, groups=3)),
    "depthwise_strided": ((1, 2, 6, 5), (2, 1, 3, 3), dict(stride=2, padding=1, groups=2)),
    "depthwise_multiplier": ((1, 2, 4, 4), (4, 1, 3, 3), dict(padding=1, groups=2)),
    "pointwise": ((2, 3, 3, 4), (4, 3, 1, 1), {}),
    "pointwise_strided": ((1, 3, 5, 5), (2, 3, 1, 1), dict(stride=2)),
    "grouped": ((1, 4, 4, 4), (4, 2, 3, 3), dict(padding=1, groups=2)),
}


# Larger cases, checked along random directions: they reach the kernels' loops that tiny shapes
# skip (several tiles of the tiled depthwise kernels, each thread of the reference weight
# reduction summing several of the N*Ho*Wo positions; more (channel, tap) pairs than 4096).
LARGE = {
    "depthwise_long_reduction": ((2, 2, 27, 25), (2, 1, 3, 3),
                                 dict(stride=2, padding=2, dilation=2, groups=2)),
    "depthwise_many_pairs": ((1, 460, 2, 3), (460, 1, 3, 3), dict(padding=1, groups=460)),
    "dense_long": ((2, 3, 19, 17), (4, 3, 3, 3), dict(padding=3, dilation=3)),
    # the tiled depthwise kernels over partial 32 x 32 tiles, with a channel multiplier
    "depthwise_partial_tiles": ((1, 2, 35, 37), (4, 1, 3, 3),
                                dict(padding=6, dilation=6, groups=2)),
}


@pytest.mark.parametrize("name, mode", [(n, "elementwise") for n in sorted(CASES)]
                         + [(n, "directional") for n in sorted(LARGE)])
def test_conv_gradient(name, mode, device):
    xs, ws, kw = {**CASES, **LARGE}[name]
    check_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), [normal(*xs), normal(*ws),
                                                            normal(ws[0])],
                   device=device, mode=mode)


@pytest.mark.parametrize("name", ["dense", "strided_odd", "atrous", "atrous_rate_beyond_map",
                                  "grouped"])
def test_conv_gradient_by_taps(name, monkeypatch):
    """The NumPy path's other algorithm for dense convs (conv2d picks it where im2col would
    multiply much padding), forced on every dense case."""
    monkeypatch.setattr(conv, "TAPS_BELOW", 2)
    xs, ws, kw = CASES[name]
    check_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), [normal(*xs), normal(*ws),
                                                            normal(ws[0])], device="cpu")


@pytest.mark.parametrize("name", ["depthwise_atrous", "depthwise_rate_beyond_map"])
def test_flat_depthwise_gradient(name, monkeypatch):
    """The NumPy path's other algorithm for stride-1 depthwise convs (conv2d picks it on wide
    maps), forced on the cases it takes."""
    monkeypatch.setattr(conv, "FLAT_MIN_WIDTH", 1)
    xs, ws, kw = CASES[name]
    check_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), [normal(*xs), normal(*ws),
                                                            normal(ws[0])], device="cpu")


def test_separable_gradient(device):
    check_backward(lambda x, wd, wp: F.separable_conv2d(x, wd, wp, rate=2),
                   [normal(1, 2, 4, 4), normal(2, 1, 3, 3), normal(3, 2, 1, 1)], device=device)
