"""ReLU (kernels/activation.cu on cuda and emu)."""
from ..function import Function
from ..kernels import grid_1d


class ReLU(Function):
    def forward(self, x):
        xp = self.dev.xp
        if not self.dev.uses_kernels:
            self.y = xp.maximum(x, 0)
            return self.y
        x = xp.ascontiguousarray(x)
        self.y = xp.empty_like(x)
        mod = self.dev.module("activation", x.dtype)
        self.dev.launch(mod, "relu_forward", grid_1d(x.size), 256, (x, self.y, x.size))
        return self.y

    def backward(self, gy):
        xp = self.dev.xp
        if not self.dev.uses_kernels:
            return gy * (self.y > 0)
        gy = xp.ascontiguousarray(gy)
        gx = xp.empty_like(gy)
        mod = self.dev.module("activation", gy.dtype)
        self.dev.launch(mod, "relu_backward", grid_1d(gy.size), 256, (self.y, gy, gx, gy.size))
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
