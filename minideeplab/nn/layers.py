"""Layers of the paper's networks: convolution, batch norm, ReLU, dropout, max pooling, and the
conv + BN + ReLU unit that every DeepLab layer is built from (paper Sec. 3)."""
import numpy as np

from .. import functional as F
from ..device import KernelDevice
from ..function import Function
from .module import Module, Parameter


def he_normal(shape, rng=None):
    """He et al. (2015) init for a conv weight (Cout, Cin/groups, kh, kw): N(0, 2 / fan_in), which
    keeps the activations' variance through a ReLU network. ``rng``: np.random.Generator."""
    rng = np.random.default_rng() if rng is None else rng
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Conv2d(Module):
    """F.conv2d with its weight. ``padding="same"`` pads dilation * (k - 1) / 2 on every side, as
    the official code's ``fixed_padding``: stride 2 maps 513 -> 257, and changing ``dilation``
    (set_output_stride) keeps the size. ``stride``/``dilation`` are plain attributes."""

    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1, bias=False,
                 rng=None):
        if cin % groups or cout % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide cin={cin} and cout={cout}")
        if padding == "same" and k % 2 == 0:
            raise ValueError(f"Conv2d: padding='same' needs an odd kernel, got k={k}")
        self.weight = Parameter(he_normal((cout, cin // groups, k, k), rng))
        self.bias = Parameter(np.zeros(cout, np.float32)) if bias else None
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x):
        k = self.weight.shape[-1]
        pad = self.dilation * (k - 1) // 2 if self.padding == "same" else self.padding
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)


class BatchNorm2d(Module):
    """F.batch_norm with gamma = 1, beta = 0 and running statistics as buffers. ``momentum`` in
    PyTorch's convention, ``running = (1 - momentum) * running + momentum * batch``: TensorFlow's
    ``decay`` is 1 - momentum (the official Xception's 0.9997 is momentum 0.0003). DeepLab sets
    each module's eps and momentum (models/deeplab.py, BATCH_NORM)."""

    def __init__(self, channels, momentum=0.1, eps=1e-5):
        self.gamma = Parameter(np.ones(channels, np.float32))
        self.beta = Parameter(np.zeros(channels, np.float32))
        self.register_buffer("running_mean", np.zeros(channels, np.float32))
        self.register_buffer("running_var", np.ones(channels, np.float32))
        self.momentum, self.eps = momentum, eps

    def forward(self, x, relu=False):
        """``relu``: then a ReLU, for a caller whose only use of the BN output is that ReLU;
        one fused op where ``fuses_relu(x.device)``."""
        fused = relu and fuses_relu(x.device)
        y = F.batch_norm(x, self.gamma, self.beta, self.running_mean, self.running_var,
                         self.training, self.momentum, self.eps, relu=fused)
        return F.relu(y) if relu and not fused else y


def fuses_relu(device):
    """Whether BN + ReLU run as one op (F.batch_norm ``relu``) on ``device``: on the kernel
    devices, where it saves launches and keeps only x. On cpu the fused op gives the two ops'
    bits, but its backward recomputes the BN output for the ReLU's mask: 1.5-1.8x the two ops'
    CPU time at the default preset's shapes, so cpu runs the two ops."""
    return isinstance(device, KernelDevice)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Dropout(Module):
    def __init__(self, p):
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)


class ConvBNReLU(Module):
    """Conv ("same" padding, no bias: BN's beta is the bias) + BN (+ ReLU): the unit of every
    layer in the paper's networks. The BN and its ReLU are one fused op on the kernel devices
    (``BatchNorm2d(x, relu=True)``)."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1, relu=True, rng=None):
        self.conv = Conv2d(cin, cout, k, stride, "same", dilation, groups, rng=rng)
        self.bn = BatchNorm2d(cout)
        self.relu = relu

    def forward(self, x, relu=None):
        """``relu``: True/False overrides ``self.relu`` for this call (a caller that ReLUs the
        output itself and reads nothing else of it fuses that ReLU here)."""
        return self.bn(self.conv(x), relu=self.relu if relu is None else relu)


class SeparableConv2d(Module):
    """Atrous separable convolution (Sec. 3.1, Fig. 3): depthwise k x k with rate ``dilation`` +
    BN, then pointwise 1x1 + BN. The official code places the ReLUs two ways:
    - default: a ReLU after each BN (model.py ``split_separable_conv2d``: ASPP and decoder; and
      core/xception.py's exit block 2, ``activation_fn_in_separable_conv=True``);
    - ``preactivation=True``: one ReLU on the input, none inside or after (every other Xception
      unit, ``activation_fn_in_separable_conv=False``), so the output can be negative."""

    def __init__(self, cin, cout, k=3, stride=1, dilation=1, preactivation=False, rng=None):
        self.depthwise = ConvBNReLU(cin, cin, k, stride, dilation, groups=cin,
                                    relu=not preactivation, rng=rng)
        self.pointwise = ConvBNReLU(cin, cout, 1, relu=not preactivation, rng=rng)
        self.preactivation = preactivation

    def forward(self, x, relu_in=None, relu_out=None):
        """``relu_in`` (default ``preactivation``): ReLU the input; ``relu_out`` (default not
        ``preactivation``): ReLU the output, the pointwise BN's ``relu``. A pre-activation unit
        passes ``relu_out=True`` when the only reader of the output is the next conv's input
        ReLU, which then takes ``relu_in=False``: the same network, one op fewer on the kernel
        devices."""
        relu_in = self.preactivation if relu_in is None else relu_in
        relu_out = not self.preactivation if relu_out is None else relu_out
        return self.pointwise(self.depthwise(F.relu(x) if relu_in else x), relu=relu_out)


class _MaxPool2d(Function):
    """k x k max over a -inf padded input. Array code on every device (a memory-bound gather);
    a running max over the k*k taps keeps memory at one output, not k*k."""

    def __init__(self, k, stride, pad):
        self.k, self.s, self.p = k, stride, pad

    def _taps(self, a):
        k, s = self.k, self.s
        ho, wo = (a.shape[2] - k) // s + 1, (a.shape[3] - k) // s + 1
        for i in range(k):
            for j in range(k):
                yield (slice(None), slice(None), slice(i, i + s * (ho - 1) + 1, s),
                       slice(j, j + s * (wo - 1) + 1, s))

    def forward(self, x):
        xp, p = self.dev.xp, self.p
        n, c, h, w = x.shape
        padded = xp.full((n, c, h + 2 * p, w + 2 * p), -np.inf, dtype=x.dtype)
        padded[:, :, p:p + h, p:p + w] = x
        self.padded_shape = padded.shape
        y = None
        for t, key in enumerate(self._taps(padded)):
            if y is None:
                y, self.argmax = padded[key].copy(), xp.zeros(padded[key].shape, np.int8)
            else:
                better = padded[key] > y
                y = xp.where(better, padded[key], y)
                self.argmax[better] = t
        return y

    def backward(self, gy):
        xp, p = self.dev.xp, self.p
        g = xp.zeros(self.padded_shape, dtype=gy.dtype)
        for t, key in enumerate(self._taps(g)):
            g[key] += gy * (self.argmax == t)  # the slices of one tap never overlap
        return g[:, :, p:g.shape[2] - p, p:g.shape[3] - p]


def max_pool2d(x, k=3, stride=2, padding=1):
    return _MaxPool2d(k, stride, padding)(x)


class MaxPool2d(Module):
    """Max pooling with "same"-style padding (k - 1) / 2: 3x3 stride 2 maps 257 -> 129 (the
    ResNet stem)."""

    def __init__(self, k=3, stride=2):
        self.k, self.stride = k, stride

    def forward(self, x):
        return max_pool2d(x, self.k, self.stride, (self.k - 1) // 2)
