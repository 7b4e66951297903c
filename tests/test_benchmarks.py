"""The benchmarks run, in --quick mode, so they cannot rot (ARCHITECTURE.md s. 11); without
PyTorch."""
import json

import numpy as np
import pytest

from benchmarks import conv_algorithms, kernels, train_step


@pytest.mark.slow  # ~4 s on emu
@pytest.mark.parametrize("device", ["cpu", "emu"])
def test_kernels_quick(device, tmp_path):
    path = tmp_path / "k.json"
    done = kernels.main(["--device", device, "--quick", "--repeat", "1", "--no-torch",
                         "--json", str(path)])
    rows = json.loads(path.read_text())["kernels"]
    assert {c.name for c in done} == {r["case"] for r in rows} and len(done) == 20
    assert all(r["ms"] > 0 and np.isfinite(r["gbps"]) for r in rows)
    launched = {r["kernel"].split(" #")[0] for r in rows} - {"op"}
    if device == "emu":  # every op's kernels, and the reference kernels, got a row of their own
        # (sgd_update is no op)
        assert {"depthwise_forward", "depthwise_backward_input", "depthwise_backward_weight",
                "depthwise_forward_reference", "depthwise_backward_input_reference",
                "depthwise_backward_weight_reference", "im2col", "col2im", "channel_sum",
                "bn_split_sums", "bn_split_statistics", "bn_forward", "bn_backward_sums",
                "bn_split_coefficients", "bn_backward_dx", "bn_moments", "bn_statistics",
                "bn_backward_coefficients",
                "resize_bilinear_forward", "resize_bilinear_backward",
                "resize_bilinear_forward_reference", "resize_bilinear_backward_reference",
                "softmax_xent_forward",
                "softmax_xent_backward", "relu_forward", "relu_backward"} == launched
    else:
        assert not launched


@pytest.mark.slow  # ~6 s on emu, most of it the reductions' barriers
@pytest.mark.parametrize("device", ["cpu", "emu"])
def test_train_step_quick(device, tmp_path):
    path = tmp_path / "t.json"
    result = train_step.main(["--device", device, "--quick", "--no-torch", "--json", str(path)])
    assert json.loads(path.read_text())["train_step"]["batch"] == 2
    assert all(np.isfinite(result["first_losses"]["ours"]))
    assert result["ours_s"] > 0 and result["ours_peak_bytes"] > 0
    if device == "emu":
        assert result["launches"]["launches"] == sum(result["launches"]["per_kernel"].values()) > 0


def test_conv_algorithms_quick(tmp_path):
    path = tmp_path / "c.json"
    rows = conv_algorithms.main(["--quick", "--repeat", "1", "--no-torch", "--json", str(path)])
    assert json.loads(path.read_text())["conv_algorithms"] == rows and len(rows) == 3
    # rate 3 on 9x9: (6 + 9 + 6) / 27 of the rows and columns on the image, 60% < TAPS_BELOW
    assert rows[0]["on_image"] == pytest.approx((21 / 27) ** 2)
    assert [r["picked"] for r in rows] == ["TapConv2d", "TapConv2d", "DepthwiseConv2d"]
    pairs = [("Conv2d", "TapConv2d")] * 2 + [("DepthwiseConv2d", "FlatDepthwiseConv2d")]
    assert all(r[a][t] > 0 for r, pair in zip(rows, pairs) for a in pair
               for t in ("forward_ms", "backward_ms"))


def test_largest_batch_stops_at_out_of_memory_only():
    class OutOfMemoryError(Exception):  # CuPy's and PyTorch's share this name, not a base class
        pass

    def step(batch):
        if batch > 17:
            raise OutOfMemoryError("out of memory allocating 1 GiB")
    assert train_step.largest_batch(step) == 16
    with pytest.raises(ZeroDivisionError):
        train_step.largest_batch(lambda batch: 1 / 0)


def test_host_counts_what_cupy_would_launch():
    from benchmarks import host
    from minideeplab.device import get_device
    dev = get_device("emu")
    tally = host.Tally()
    with host.instrumented(dev, tally):
        xp = dev.xp
        a = xp.ones((2, 3, 4, 5), np.float32)  # a fill (and w below)
        b = a * 2 + 1  # two elementwise kernels
        b.sum(axis=(0, 2, 3))  # one reduction
        a.reshape(6, 20).T.copy()  # a view, then one copy
        w = xp.ones((4, 3), np.float32)
        xp.matmul(w, a.reshape(2, 3, 20))  # broadcast w: pointer arrays (3) and a batched GEMM
        bool(b[0, 0, 0, 0] > 0)  # one comparison, one sync
    assert tally.kernels == {"ones": 2, "multiply": 1, "add": 1, "add.reduce": 1, "copy": 1,
                             "matmul: gemm": 1, "matmul: pointer arrays": 3, "greater": 1}
    assert tally.syncs == {"forward: bool": 1}


@pytest.mark.slow  # ~5 s on emu
def test_host_quick(tmp_path):
    from benchmarks import host
    path = tmp_path / "h.json"
    r = host.main(["--preset", "quick", "--repeat", "1", "--json", str(path)])["quick"]
    assert json.loads(path.read_text())["host"]["quick"]["kernels"] == r["kernels"]
    assert r["kernels"] == r["our_launches"] + r["xp_kernels"] == sum(r["per_kernel"].values())
    assert r["our_launches"] > 0 and r["host_ms"] > 0
    for m in r["memory"].values():
        assert 0 < m["backward_reads_bytes"] <= m["graph_bytes"]
