"""Batch normalisation (Ioffe & Szegedy 2015) with PyTorch's conventions (DESIGN.md s. 8).

Training normalises with the biased batch variance and updates the running statistics in place,
``running = (1 - momentum) * running + momentum * batch_stat`` with the unbiased variance;
evaluation uses the running statistics. The variance is a sum of squared deviations from the mean
(two passes), never E[x^2] - E[x]^2, which cancels on inputs with a large mean.
"""
from ..function import Function
from ..kernels import grid_1d
from ..tensor import Tensor
from .reduce import CHANNEL_SUM_BLOCK, channel_sum


def _rowdot(xp, a, b):
    """sum over n and l of a[n, c, l] * b[n, c, l]: one BLAS dot per (n, c) row."""
    return xp.matmul(a[:, :, None, :], b[:, :, :, None]).sum(axis=(0, 2, 3))


class BatchNorm(Function):
    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running = [r.data if isinstance(r, Tensor) else r for r in (running_mean, running_var)]
        self.training, self.momentum, self.eps = bool(training), momentum, eps

    def forward(self, x, gamma, beta):
        xp = self.dev.xp
        if x.ndim != 4 or any(a.shape != (x.shape[1],) for a in [gamma, beta] + self.running):
            raise ValueError(f"batch_norm: x must be (N, C, H, W) and gamma, beta, running_mean, "
                             f"running_var (C,); got {x.shape}, {gamma.shape}, {beta.shape}, "
                             f"{self.running[0].shape}, {self.running[1].shape}")
        if not all(isinstance(r, xp.ndarray) for r in self.running):
            raise ValueError(f"batch_norm: running statistics must be {xp.__name__} arrays on "
                             f"{self.dev} (they are updated in place)")
        N, C = x.shape[:2]
        self.x3 = x3 = xp.ascontiguousarray(x).reshape(N, C, -1)
        self.M = M = N * x3.shape[2]
        if self.training and M < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, "
                             f"got x of shape {x.shape}")
        if not self.training:
            mean, var = (r.astype(x.dtype) for r in self.running)
        elif not self.dev.uses_kernels:
            mean = x3.sum(axis=2).sum(axis=0) / M  # NumPy sums pairwise along the contiguous axis
            y = x3 - mean[:, None]  # the deviations, made into y in place below
            var = _rowdot(xp, y, y) / M
        else:
            mean0 = channel_sum(x3[..., None], self.dev) / M
            s1, s2 = self._moments(x3, mean0, x3, mean0)
            # Corrected two-pass (Chan, Golub & LeVeque 1983): the deviations' sum s1 removes the
            # rounding error left in the first-pass mean.
            mean, var = mean0 + s1 / M, xp.maximum(s2 / M - (s1 / M) ** 2, 0)
        if self.training:
            for r, stat in zip(self.running, (mean, var * (M / (M - 1)))):
                r *= 1 - self.momentum
                r += self.momentum * stat.astype(r.dtype)
        self.gamma, self.mean, self.invstd = gamma, mean, 1 / xp.sqrt(var + self.eps)
        scale = gamma * self.invstd
        if not self.dev.uses_kernels:
            # One new array, no saved deviations: the backward recomputes them from x (which
            # the graph keeps anyway), halving the memory batch norm holds for it.
            if not self.training:
                y = x3 - mean[:, None]
            y *= scale[:, None]
            y += beta[:, None]
            return y.reshape(x.shape)
        y = xp.empty_like(x3)
        self.dev.launch(self.dev.module("norm", x.dtype), "bn_forward", grid_1d(y.size), 256,
                        (x3, mean, scale, beta, y, C, x3.shape[2], y.size))
        return y.reshape(x.shape)

    def _moments(self, x3, mean, g3, gshift):
        """Kernel path: per channel, s1 = sum(w) and s2 = sum(w * (x - mean)), w = g - gshift."""
        N, C, L = x3.shape
        out = self.dev.xp.empty(2 * C, dtype=x3.dtype)
        self.dev.launch(self.dev.module("norm", x3.dtype), "bn_moments", C, CHANNEL_SUM_BLOCK,
                        (x3, mean, g3, gshift, out, N, C, L))
        return out[:C], out[C:]

    def backward(self, gy):
        xp, M, invstd = self.dev.xp, self.M, self.invstd
        gy3 = xp.ascontiguousarray(gy).reshape(self.x3.shape)
        if self.dev.uses_kernels:
            dbeta, dgd = self._moments(self.x3, self.mean, gy3, xp.zeros_like(self.mean))
        else:
            d = self.x3 - self.mean[:, None]
            dbeta, dgd = gy3.sum(axis=2).sum(axis=0), _rowdot(xp, gy3, d)
        dgamma, a = dgd * invstd, self.gamma * invstd  # dgd = sum(gy * (x - mean))
        # Training: dx = a * (gy - k1 - (x - mean) * k2), k1 = dbeta / M, k2 = invstd dgamma / M
        # (the batch statistics depend on x); eval: the statistics are constants, dx = a * gy.
        k1, k2 = (dbeta / M, invstd * dgamma / M) if self.training else (0 * a, 0 * a)
        if self.dev.uses_kernels:
            dx = xp.empty_like(gy3)
            self.dev.launch(self.dev.module("norm", gy.dtype), "bn_backward_dx", grid_1d(dx.size),
                            256, (self.x3, gy3, self.mean, a, k1, k2, dx, dx.shape[1],
                                  dx.shape[2], dx.size))
        elif self.training:  # in place in d: ((gy - k1) - d * k2) * a
            dx = d
            dx *= -k2[:, None]
            dx += gy3
            dx -= k1[:, None]
            dx *= a[:, None]
        else:
            dx = gy3 * a[:, None]
        return dx.reshape(gy.shape), dgamma, dbeta

def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Normalise each channel of NCHW ``x``, then scale by ``gamma`` and shift by ``beta``.

    ``running_mean`` / ``running_var``: (C,) arrays (or Tensors) on x's device, updated in place
    when ``training``."""
    return BatchNorm(running_mean, running_var, training, momentum, eps)(x, gamma, beta)
