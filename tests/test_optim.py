"""SGD and the poly schedule against closed forms, on every device, and the kernel path against
the NumPy one (paper Sec. 4; ARCHITECTURE.md section 8)."""
import numpy as np
import pytest

import minideeplab as mdl
from minideeplab.device import get_device
from minideeplab.optim import SGD, poly_lr
from tests.conftest import assert_close


def param(values, device="cpu"):
    return mdl.Tensor(np.asarray(values, dtype=np.float64), requires_grad=True, device=device)


def run(opt, params, grads, steps):
    for _ in range(steps):
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = p.device.xp.full(p.shape, g)
        opt.step()


def test_momentum_closed_form_constant_gradient(device):
    # With a constant gradient g, buf_k = g (1 - m^k) / (1 - m) and x_n = x0 - lr * sum_k buf_k.
    x = param([1.0, -2.0], device)
    lr, m, g, n = 0.1, 0.9, 0.5, 4
    run(SGD([x], lr=lr, momentum=m), [x], [g], n)
    expected = np.array([1.0, -2.0]) - lr * g * sum((1 - m ** k) / (1 - m) for k in range(1, n + 1))
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-12)


def test_weight_decay_without_momentum_is_geometric(device):
    # grad 0, decay wd: x_n = x0 (1 - lr wd)^n
    w = param(np.ones((2, 3)), device)
    run(SGD([w], lr=0.5, momentum=0.0, weight_decay=0.1), [w], [0.0], 3)
    np.testing.assert_allclose(w.numpy(), 0.95 ** 3, rtol=1e-12)


def test_momentum_and_decay_match_recurrence_and_skip_1d(device):
    w, b = param(np.full((2, 2), 2.0), device), param([2.0, 2.0], device)
    opt = SGD([w, b], lr=0.1, momentum=0.9, weight_decay=0.01)
    run(opt, [w, b], [1.0, 1.0], 3)
    x, buf = 2.0, 0.0
    for _ in range(3):  # scalar recurrence of the documented update
        buf = 0.9 * buf + (1.0 + 0.01 * x)
        x -= 0.1 * buf
    np.testing.assert_allclose(w.numpy(), x, rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), 2.0 - 0.1 * (1 + 1.9 + 2.71), rtol=1e-12)  # no decay


def test_nesterov_first_step_and_no_decay_override(device):
    b = param([1.0], device)
    run(SGD([b], lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True, no_decay=lambda p: False),
        [b], [1.0], 1)
    # g = 1 + 0.5 = 1.5, buf = 1.5, step = g + 0.9 buf = 2.85
    np.testing.assert_allclose(b.numpy(), [1.0 - 0.285], rtol=1e-12)


def test_step_is_in_place_and_skips_missing_grads(device):
    w, v = param([1.0], device), param([3.0], device)
    ref = w.data
    opt = SGD([w, v], lr=1.0, momentum=0.0)
    w.grad = get_device(device).asarray(np.array([0.25]))
    opt.step()
    assert w.data is ref and float(ref[0]) == 0.75 and float(v.data[0]) == 3.0
    assert opt.buffers == [None, None]  # no momentum, no buffers (nothing to checkpoint)
    opt.zero_grad()
    assert w.grad is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_every_device_takes_the_cpu_steps(device, dtype, momentum, nesterov):
    """The kernel path (kernels/optim.cu) against the NumPy twin: three steps from random values
    of a decayed parameter (many blocks; its gradient a strided view) and an undecayed one."""
    rng = np.random.default_rng(0)
    shapes = [(40, 30, 3, 3), (70,)]
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    results = {}
    for dev in ("cpu", device):
        # Copies: on cpu the tensors share their arrays, which the steps update in place.
        ps = [mdl.Tensor(v.copy(), requires_grad=True, device=dev) for v in values]
        opt = SGD(ps, lr=0.05, momentum=momentum, weight_decay=1e-3, nesterov=nesterov)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = get_device(dev).asarray(g)
            ps[0].grad = get_device(dev).asarray(gs[0].T.copy()).T  # not C-contiguous
            opt.step()
        results[dev] = [p.numpy() for p in ps] + [get_device("cpu").asarray(b)
                                                  for b in opt.buffers if b is not None]
    assert len(results[device]) == len(results["cpu"])
    for actual, expected in zip(results[device], results["cpu"]):
        assert_close(actual, expected, dtype=dtype)


def test_state_dict_round_trip_continues_identically(device):
    w1, w2 = param([[1.0, 2.0]], device), param([[1.0, 2.0]], device)
    a = SGD([w1], lr=0.1, momentum=0.9, weight_decay=0.1)
    run(a, [w1], [0.3], 2)
    state = {k: np.array(v) for k, v in a.state_dict().items()}  # as through an .npz
    w2.data[...] = w1.data
    b = SGD([w2], lr=99.0, momentum=0.0)
    b.load_state_dict(state)
    run(a, [w1], [0.3], 2)
    run(b, [w2], [0.3], 2)
    np.testing.assert_array_equal(w1.numpy(), w2.numpy())
    assert b.lr == 0.1 and not np.shares_memory(get_device("cpu").asarray(b.buffers[0]),
                                                state["buf.0"])
    with pytest.raises(ValueError, match="buf.0"):
        SGD([param([1.0], device)], lr=0.1).load_state_dict(state)


def test_poly_lr():
    assert poly_lr(0.007, 0, 100) == 0.007
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 30, 100, power=1.0) == pytest.approx(0.007)
