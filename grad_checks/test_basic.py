"""Float64 central-difference checks of every basic op, on every device."""
import numpy as np
import pytest

import minideeplab.functional as F
from minideeplab.gradcheck import check_backward

rng = np.random.default_rng(0)
positive = lambda *s: rng.uniform(0.5, 2.0, s)  # noqa: E731  (log and div need x away from 0)
normal = lambda *s: rng.standard_normal(s)  # noqa: E731

CASES = {
    "add_broadcast": (lambda a, b: a + b, [normal(2, 3, 4), normal(3, 1)]),
    "sub_broadcast": (lambda a, b: a - b, [normal(2, 1, 4), normal(3, 4)]),
    "mul_broadcast": (lambda a, b: a * b, [normal(2, 3, 4), normal(4)]),
    "div_broadcast": (lambda a, b: a / b, [normal(2, 3), positive(2, 1)]),
    "scalar_ops": (lambda a: 2.0 - a * 3.0 / 1.5 + 1.0, [normal(3, 2)]),
    "rdiv": (lambda a: 1.0 / a, [positive(4)]),
    "neg": (lambda a: -a, [normal(3, 2)]),
    "pow": (lambda a: a ** 3, [normal(5)]),
    "exp": (F.exp, [normal(2, 3)]),
    "log": (F.log, [positive(2, 3)]),
    "matmul": (F.matmul, [normal(3, 4), normal(4, 2)]),
    "matmul_batched": (F.matmul, [normal(2, 3, 4), normal(4, 5)]),
    "reshape": (lambda a: a.reshape(6, 2), [normal(3, 4)]),
    "transpose": (lambda a: a.transpose(2, 0, 1), [normal(2, 3, 4)]),
    "broadcast_to": (lambda a: F.broadcast_to(a, (2, 3, 4)), [normal(3, 1)]),
    "sum_all": (lambda a: a.sum(), [normal(3, 4)]),
    "sum_axis_keepdims": (lambda a: a.sum(axis=(0, 2), keepdims=True), [normal(2, 3, 4)]),
    "mean_axis": (lambda a: a.mean(axis=-1), [normal(2, 3, 4)]),
    "getitem": (lambda a: a[1:, ::2, None, 0], [normal(3, 5, 2)]),
    "concat": (lambda a, b, c: F.concat([a, b, c], axis=1), [normal(2, 1, 3), normal(2, 2, 3),
                                                             normal(2, 3, 3)]),
    "relu": (F.relu, [normal(3, 5, 7) + 0.05]),
    "diamond_reuse": (lambda a: (a * a + F.exp(a)) * a, [normal(4)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient(name, device):
    fn, inputs = CASES[name]
    check_backward(fn, inputs, device=device)


def test_directional_mode_catches_a_wrong_gradient(device):
    """The random-direction mode (large inputs) must fail on a wrong backward too."""
    class Twice(F.basic.Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            return -2 * gy  # wrong sign on purpose

    with pytest.raises(AssertionError, match="gradient check failed"):
        check_backward(lambda x: Twice()(x), [normal(30, 30)], device=device, mode="directional")
    with pytest.raises(AssertionError, match=r"input 0.*max abs error"):
        check_backward(lambda x: Twice()(x), [normal(3)], device=device, mode="elementwise")


def test_integer_inputs_pass_through_as_constants(device):
    """Labels and indices are not perturbed: they reach ``fn`` with their integer dtype."""
    def fn(x, k):
        assert k.dtype.kind == "i", k.dtype
        return x * F.reshape(k, (3,))
    check_backward(fn, [normal(3), np.array([1, 2, 3])], device=device)
