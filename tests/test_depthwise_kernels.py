"""The tiled depthwise kernels of kernels/conv.cu and their readable *_reference versions, each
against the NumPy path (itself checked against naive loops in test_conv.py), on emu; and planted
bugs in the tiled forward (a wrong halo offset, a missing barrier) that these tests catch
(ARCHITECTURE.md s. 5 and 10)."""
import shutil
from pathlib import Path

import numpy as np
import pytest

import minideeplab.functional.conv as conv
from minideeplab.device import get_device
from minideeplab.kernels import MAX_GRID, launch
from tests.conftest import assert_close

KERNELS = Path(conv.__file__).parent.parent / "kernels"

# (x shape, w shape, stride, padding, dilation): partial tiles (37 x 45 outputs against 32-wide
# tiles), the paper's rates, a rate larger than the map, stride 2 on odd sizes, batch 1, 1x1 maps,
# a channel multiplier, unequal pairs, and a window too large for shared memory (the reference
# kernels run).
CASES = {
    "partial_tiles": ((2, 2, 37, 45), (2, 1, 3, 3), 1, 1, 1),
    "rate_6": ((1, 2, 20, 19), (2, 1, 3, 3), 1, 6, 6),
    "rate_12": ((1, 1, 21, 40), (1, 1, 3, 3), 1, 12, 12),
    "rate_18": ((2, 1, 33, 33), (1, 1, 3, 3), 1, 18, 18),
    "rate_beyond_map": ((1, 3, 5, 5), (3, 1, 3, 3), 1, 36, 36),
    "stride_2_odd": ((1, 2, 13, 15), (2, 1, 3, 3), 2, 1, 1),
    "stride_2_atrous_odd": ((2, 1, 35, 9), (1, 1, 3, 3), 2, 2, 2),
    "one_by_one_map": ((2, 3, 1, 1), (3, 1, 3, 3), 1, 1, 1),
    "multiplier_3": ((1, 2, 9, 10), (6, 1, 3, 3), 1, 2, 2),
    "pairs": ((1, 2, 8, 9), (2, 1, 3, 2), (2, 1), (1, 2), (2, 3)),
    "window_too_large": ((1, 1, 80, 80), (1, 1, 3, 3), 1, 40, 40),
}


def geometry(name):
    xs, ws, stride, padding, dilation = CASES[name]
    return conv._geometry(xs, ws, None, stride, padding, dilation, xs[1])


def arrays(g, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((g.N, g.C, g.H, g.W)), rng.standard_normal((g.Cout, 1, g.kh, g.kw)),
            rng.standard_normal((g.N, g.Cout, g.Ho, g.Wo)))


def op_results(device, g, x, w, gy):
    """y, gx, gw of DepthwiseConv2d on ``device`` (kernel or NumPy path)."""
    op = conv.DepthwiseConv2d(g)
    op.dev, op.needs_grad = get_device(device), (True, True)
    if op.dev.uses_kernels:
        y = op.forward_kernel(x, w)
        return (y, *op.backward_kernel(gy)[:2])
    return (op.forward_cpu(x, w), *op.backward_cpu(gy)[:2])


def reference_results(g, x, w, gy):
    """y, gx, gw of the depthwise_*_reference kernels on emu."""
    dev, args = get_device("emu"), (g.Cout // g.C,) + conv._geom_args(g)
    y, gx, gw = np.empty_like(gy), np.empty_like(x), np.empty_like(w)
    launch(dev, "conv", "depthwise_forward_reference", (x, w, y) + args, n=y.size)
    launch(dev, "conv", "depthwise_backward_input_reference", (gy, w, gx) + args, n=gx.size)
    launch(dev, "conv", "depthwise_backward_weight_reference", (x, gy, gw) + args,
           grid=min(gw.size, MAX_GRID))
    return y, gx, gw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_tiled_and_reference_kernels_match_the_numpy_path(name, dtype):
    g = geometry(name)
    x, w, gy = (a.astype(dtype) for a in arrays(g))
    expected = op_results("cpu", g, x, w, gy)
    kind = "float32_long" if dtype == np.float32 else np.dtype(dtype)
    tiled, reference = op_results("emu", g, x, w, gy), reference_results(g, x, w, gy)
    for a, b, r in zip(tiled, expected, reference):
        assert_close(a, b, kind=kind)
        assert_close(r, b, kind=kind)
    # The forward and the input gradient add the same products in the same order as the
    # reference kernels: the same bits. The weight gradient's split reduction adds them in
    # another (fixed) order.
    np.testing.assert_array_equal(tiled[0], reference[0])
    np.testing.assert_array_equal(tiled[1], reference[1])


def test_the_cases_reach_both_paths():
    """Every case but the last fits a tile's window in shared memory; the last runs the
    reference kernels."""
    for name in CASES:
        g = geometry(name)
        rows = conv._depthwise_rows(g, (g.Ho, g.Wo), (g.H, g.W), False)
        assert (rows is None) == (name == "window_too_large"), name
    g = geometry("partial_tiles")
    assert conv._depthwise_rows(g, (g.Ho, g.Wo), (g.H, g.W), False) == 4  # 37 rows: 32-row tiles
    g = geometry("one_by_one_map")
    assert conv._depthwise_rows(g, (g.Ho, g.Wo), (g.H, g.W), False) == 1


def test_the_kernels_are_deterministic():
    g = geometry("rate_6")
    x, w, gy = arrays(g, seed=1)
    first, second = op_results("emu", g, x, w, gy), op_results("emu", g, x, w, gy)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# A planted bug: (text in depthwise_forward, its replacement).
BUGS = {
    "wrong_halo_offset": ("j * dw - c0;  // the tap's window column",
                          "j * dw - c0 + 1;  // the tap's window column"),
    "missing_barrier": ("    __syncthreads();\n    const real* ws = win + DW_HALO - kh * kw;",
                        "    const real* ws = win + DW_HALO - kh * kw;"),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_a_planted_bug_in_the_tiled_forward_is_caught(bug, tmp_path, monkeypatch):
    """A mutated copy of conv.cu in a temp dir, run by DepthwiseConv2d in place of the real one:
    the forward no longer matches the NumPy path."""
    shutil.copy(KERNELS / "block_reduce.cuh", tmp_path)
    source = (KERNELS / "conv.cu").read_text()
    old, new = BUGS[bug]
    assert source.count(old) == 1, f"{bug}: the text to mutate is not in conv.cu once"
    (tmp_path / "conv.cu").write_text(source.replace(old, new))
    mutated = str(tmp_path / "conv.cu")
    monkeypatch.setattr(conv, "launch", lambda dev, family, *a, **k: launch(
        dev, mutated if family == "conv" else family, *a, **k))
    g = geometry("partial_tiles")
    x, w, gy = arrays(g)
    y = op_results("emu", g, x, w, gy)[0]
    assert not np.allclose(y, op_results("cpu", g, x, w, gy)[0])
