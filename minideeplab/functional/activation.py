"""ReLU (kernels/activation.cu on cuda and emu)."""
import numpy as np

from .. import threads
from ..function import Function
from ..kernels import launch


class ReLU(Function):
    name, reals = "relu", ("x",)

    def forward_cpu(self, x):
        x = np.ascontiguousarray(x)
        self.y = np.empty_like(x)
        # Blocks of the elements, split over threads.
        threads.over(lambda s: np.maximum(x.reshape(-1)[s], 0, out=self.y.reshape(-1)[s]),
                     x.size, x.size)
        return self.y

    def forward_kernel(self, x):
        self.y = self.dev.xp.empty(x.shape, x.dtype)
        launch(self.dev, "activation", "relu_forward", (x, self.y, x.size), n=x.size)
        return self.y

    def backward_cpu(self, gy):
        gy, gx = np.ascontiguousarray(gy), np.empty_like(self.y)
        threads.over(lambda s: np.multiply(gy.reshape(-1)[s], self.y.reshape(-1)[s] > 0,
                                           out=gx.reshape(-1)[s]), gy.size, gy.size)
        return gx

    def backward_kernel(self, gy):
        gx = self.dev.xp.empty(gy.shape, gy.dtype)
        launch(self.dev, "activation", "relu_backward", (self.y, gy, gx, gy.size), n=gy.size)
        return gx


def relu(x):
    return ReLU()(x)


# Dropout masks come from one generator per device, numpy's on cpu and emu, CuPy's on cuda (drawn
# on the GPU), so cpu and emu draw the same masks from the same seed. Applying a mask is a single
# multiply through ``xp`` on every device: a kernel would teach nothing that relu's does not.
_seed, _generators = 0, {}


def seed(s):
    """Restart dropout's generators on every device from ``s``."""
    global _seed
    _seed = int(s)
    _generators.clear()


class Dropout(Function):
    name, reals = "dropout", ("x",)

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        dev = self.dev
        if dev.name not in _generators:
            _generators[dev.name] = dev.xp.random.default_rng(_seed)
        keep = _generators[dev.name].random(x.shape, dtype=x.dtype) >= self.p
        self.mask = keep * x.dtype.type(1 / (1 - self.p))  # inverted: the eval network is as is
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def dropout(x, p, training):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) when
    ``training`` (Srivastava et al. 2014); the identity otherwise (ASPP uses p = 0.1)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    return Dropout(p)(x) if training and p > 0 else x
