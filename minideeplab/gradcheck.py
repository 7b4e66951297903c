"""Numerical gradient check: float64 central differences against ``backward()``
(ARCHITECTURE.md s. 10).

With a random upstream gradient ``gy`` the scalar ``L(x) = sum(fn(x) * gy)`` has gradient
``backward(gy)``. The ``elementwise`` mode perturbs every input element (small inputs); the
``directional`` mode, as Chainer's ``gradient_check``, compares the derivative of ``L`` along random
directions ``d`` with ``<grad, d>`` (large inputs: two evaluations per direction).
"""
import numpy as np

from .config import no_grad
from .tensor import Tensor


def check_backward(fn, inputs, grad_output=None, device=None, eps=1e-6, atol=1e-6, rtol=1e-5,
                   mode="auto", directions=6, max_elementwise=256, seed=0):
    """Raise AssertionError unless ``fn``'s backward matches central differences.

    ``inputs``: arrays or Tensors; floating ones (float64 required) are checked, integer ones
    (labels) are passed as constants. ``fn`` must be deterministic.
    """
    device = device or next((x.device for x in inputs if isinstance(x, Tensor)), "cpu")
    arrays = [np.array(x.numpy() if isinstance(x, Tensor) else x) for x in inputs]
    checked = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    for i in checked:
        if arrays[i].dtype != np.float64:
            raise ValueError(f"check_backward: input {i} is {arrays[i].dtype}; central "
                             "differences need float64")
    rng = np.random.default_rng(seed)

    def run(arrs, grad):
        ts = [Tensor(a, requires_grad=grad and i in checked, device=device)
              for i, a in enumerate(arrs)]
        return ts, fn(*ts)

    ts, y = run(arrays, True)
    gy = rng.standard_normal(y.shape) if grad_output is None else np.asarray(grad_output)
    y.backward(gy)
    analytic = {i: np.zeros_like(arrays[i]) if ts[i].grad is None else
                Tensor(ts[i].grad).numpy() for i in checked}

    def loss(arrs):
        with no_grad():
            return float((run(arrs, False)[1].numpy() * gy).sum())

    def central(deltas):
        plus = [a + deltas[i] * eps if i in deltas else a for i, a in enumerate(arrays)]
        minus = [a - deltas[i] * eps if i in deltas else a for i, a in enumerate(arrays)]
        return (loss(plus) - loss(minus)) / (2 * eps)

    total = sum(arrays[i].size for i in checked)
    if mode == "elementwise" or (mode == "auto" and total <= max_elementwise):
        for i in checked:
            numeric = np.zeros_like(arrays[i])
            for idx in np.ndindex(arrays[i].shape):
                unit = np.zeros_like(arrays[i])
                unit[idx] = 1
                numeric[idx] = central({i: unit})
            _compare(f"input {i}", analytic[i], numeric, atol, rtol)
    else:
        for k in range(directions):
            d = {i: rng.standard_normal(arrays[i].shape) for i in checked}
            norm = np.sqrt(sum((v ** 2).sum() for v in d.values()))
            d = {i: v / norm for i, v in d.items()}
            expected = sum((analytic[i] * d[i]).sum() for i in checked)
            _compare(f"direction {k} over inputs {checked}", np.array([expected]),
                     np.array([central(d)]), atol, rtol)


def _compare(what, analytic, numeric, atol, rtol):
    bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
    if bad.any():
        first = np.argwhere(bad)[:3]
        pairs = ", ".join(f"{tuple(int(j) for j in ix)}: backward {analytic[tuple(ix)]:.6g} vs "
                          f"numeric {numeric[tuple(ix)]:.6g}" for ix in first)
        raise AssertionError(f"gradient check failed for {what}: max abs error "
                             f"{np.abs(analytic - numeric).max():.3g} "
                             f"({int(bad.sum())} of {bad.size} differ); first: {pairs}")
