"""Multiply-Adds, the paper's complexity unit (Tables 3 and 5), from a shape-only pass.

The model's own ``forward`` runs on a stand-in that carries nothing but a shape: while it runs,
the functional ops it calls are swapped for shape rules, so the count follows exactly the layers
that forward executes, at any input size, in milliseconds and without allocating activations.

Counted: every convolution (dense, strided, atrous, depthwise, pointwise, the image-pooling
branch's 1x1 conv on its 1x1 map and the 1x1 logits conv), each as kernel taps x input channels
per group x output elements (padding taps included, as a GEMM/TF does them). Not counted: batch
norm, ReLU, biases, residual additions, pooling, bilinear resizing, softmax; these are
elementwise, under 1% of the total for the paper's networks.

``space_to_batch=True`` counts a dilated conv as TensorFlow 1.x runs it (SpaceToBatchND, conv,
BatchToSpaceND): over the output map padded up to a multiple of the rate. The paper's figures
were measured that way; it matters for dense atrous convs (ResNet-101 at output stride 16: 81.02B
vs 76.05B counted exactly), hardly for separable ones (the depthwise conv is cheap).
"""
import contextlib

import numpy as np

from . import functional as F
from .nn import layers

# The paper's multi-scale inference (Sec. 4.3), counted here and run by evaluate.
MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


class Shape:
    """Stands in for a Tensor in the shape-only pass (on no device)."""

    device = None

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)

    def __add__(self, other):
        if self.shape != other.shape:
            raise ValueError(f"add: shapes {self.shape} and {other.shape} differ")
        return self

    __radd__ = __add__

    def __getitem__(self, key):
        # Basic slicing on a zero-strided view: the shape NumPy would give, without memory.
        return Shape(np.lib.stride_tricks.as_strided(np.zeros(1), self.shape,
                                                     (0,) * len(self.shape))[key].shape)


def _out(n, k, stride, pad, dilation):
    return (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1


class _ShapeOps:
    """Shape rules for the functional ops; conv2d also counts its Multiply-Adds."""

    def __init__(self, space_to_batch=False):
        self.multiply_adds, self.space_to_batch = 0, space_to_batch

    def conv2d(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        n, cin, h, wd = x.shape
        cout, cin_g, kh, kw = w.shape
        if cin != cin_g * groups:
            raise ValueError(f"conv2d: input {x.shape} has {cin} channels; weight {w.shape} with "
                             f"groups={groups} expects {cin_g * groups}")
        out = (n, cout, _out(h, kh, stride, padding, dilation),
               _out(wd, kw, stride, padding, dilation))
        counted = out
        if self.space_to_batch and dilation > 1 and stride == 1:
            counted = out[:2] + tuple(-(-size // dilation) * dilation for size in out[2:])
        self.multiply_adds += kh * kw * cin_g * int(np.prod(counted))
        return Shape(out)

    def max_pool2d(self, x, k=3, stride=2, padding=1):
        n, c, h, w = x.shape
        return Shape((n, c, _out(h, k, stride, padding, 1), _out(w, k, stride, padding, 1)))

    def resize_bilinear(self, x, size, align_corners=True):
        return Shape(x.shape[:2] + tuple(size))

    def global_avg_pool(self, x):
        return Shape(x.shape[:2] + (1, 1))

    def concat(self, tensors, axis=1):
        shape = list(tensors[0].shape)
        shape[axis] = sum(t.shape[axis] for t in tensors)
        return Shape(shape)

    @staticmethod
    def same(x, *args, **kwargs):  # batch_norm, relu, dropout
        return x


@contextlib.contextmanager
def _shape_only(space_to_batch):
    ops = _ShapeOps(space_to_batch)
    swaps = [(F, name, getattr(ops, name)) for name in
             ("conv2d", "resize_bilinear", "global_avg_pool", "concat")]
    swaps += [(F, name, ops.same) for name in ("batch_norm", "relu", "dropout")]
    swaps.append((layers, "max_pool2d", ops.max_pool2d))
    saved = [(mod, name, mod.__dict__.get(name)) for mod, name, _ in swaps]
    try:
        for mod, name, rule in swaps:
            setattr(mod, name, rule)
        yield ops
    finally:
        for mod, name, original in saved:
            if original is None:
                delattr(mod, name)
            else:
                setattr(mod, name, original)


def trace(module, input_shape, space_to_batch=False):
    """Run ``module`` on a Shape of ``input_shape`` (N, C, H, W); returns (its output, with
    Shapes where tensors would be, and the Multiply-Adds of the whole batch)."""
    with _shape_only(space_to_batch) as ops:
        out = module(Shape(input_shape))
    return out, ops.multiply_adds


def count_multiply_adds(model, input_shape, space_to_batch=False):
    """Multiply-Adds of one image of ``input_shape`` (C, H, W) through ``model`` (see the module
    docstring for what is counted). Depends on the model's current output stride."""
    return trace(model, (1, *input_shape), space_to_batch)[1]


def scale_dimension(size, scale):
    """The official code's input size at ``scale`` (it truncates): 513 -> 257, 385, 513, 641,
    769, 897 over MULTI_SCALES; 100 at 0.5 -> 50. Both the count here and evaluate use it."""
    return int((size - 1) * scale + 1)


def count_multi_scale_multiply_adds(model, input_shape, scales=MULTI_SCALES, flip=True,
                                    space_to_batch=False):
    """Multiply-Adds of multi-scale inference (Sec. 4.3): one pass per scale, twice with the
    left-right flip. The bilinear resizes and the averaging of probabilities are not counted."""
    c, h, w = input_shape
    total = sum(count_multiply_adds(model, (c, scale_dimension(h, s), scale_dimension(w, s)),
                                    space_to_batch) for s in scales)
    return total * (2 if flip else 1)
