"""Graders for the lessons' exercises: each takes the learner's code and checks it against an
independent reference (central differences, SciPy), saying what is wrong (shape, value, gradient,
index) instead of just that it failed.

A stub as shipped (raises ``NotImplementedError`` or returns None) is "not done yet": the grader
prints that and returns, so the notebook runs to the end. A wrong answer raises AssertionError with
the diagnosis; a right one prints what was checked. Every grader returns ``NOT_DONE`` or ``PASSED``
(tests/test_exercises.py runs each on the stub, the reference solution and wrong solutions).
"""
import numpy as np
import scipy.signal

import minideeplab as mdl
from minideeplab.gradcheck import check_backward

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
