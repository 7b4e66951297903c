"""Batch normalisation (Ioffe & Szegedy 2015) with PyTorch's conventions (ARCHITECTURE.md s. 9).

Training normalises with the biased batch variance and updates the running statistics in place,
``running = (1 - momentum) * running + momentum * batch_stat`` with the unbiased variance;
evaluation uses the running statistics. The variance is a sum of squared deviations from the mean
(two passes), never E[x^2] - E[x]^2, which cancels on inputs with a large mean.

On ``cuda`` and ``emu`` (kernels/norm.cu) a forward is bn_split_sums, bn_split_statistics and
bn_forward (eval: bn_statistics and bn_forward), a backward bn_backward_sums,
bn_split_coefficients and bn_backward_dx: the statistics in one pass over x (sums shifted by a
value of the channel, which do not cancel), each channel split over several blocks so that a few
hundred channels fill a GPU; the per-channel arithmetic in one launch, not as a dozen array
operations that each cost a launch. ``batch_norm(..., relu=True)`` is batch norm and the ReLU
after it as one op, ``BatchNormReLU``, whose elementwise kernels fuse the ReLU. norm.cu's
one-block-per-channel kernels (channel_sum, bn_moments, ...) are the readable reference versions.
"""
import numpy as np

from .. import threads
from ..function import Function
from ..kernels import BLOCK, launch
from ..tensor import Tensor


def _rowdot(xp, a, b):
    """sum over n and l of a[n, c, l] * b[n, c, l]: one BLAS dot per (n, c) row."""
    return xp.matmul(a[:, :, None, :], b[:, :, :, None]).sum(axis=(0, 2, 3))


class BatchNorm(Function):
    name, reals = "batch_norm", ("x", "gamma", "beta")

    def __init__(self, running_mean, running_var, training, momentum, eps):
        self.running = [r.data if isinstance(r, Tensor) else r for r in (running_mean, running_var)]
        self.training, self.momentum, self.eps = bool(training), momentum, eps

    def check(self, x, gamma, beta):
        xp = self.dev.xp
        if x.ndim != 4 or any(a.shape != (x.shape[1],) for a in [gamma, beta] + self.running):
            raise ValueError(f"batch_norm: x must be (N, C, H, W) and gamma, beta, running_mean, "
                             f"running_var (C,); got {x.shape}, {gamma.shape}, {beta.shape}, "
                             f"{self.running[0].shape}, {self.running[1].shape}")
        if not all(isinstance(r, xp.ndarray) for r in self.running):
            raise ValueError(f"batch_norm: running statistics must be {xp.__name__} arrays on "
                             f"{self.dev} (they are updated in place)")
        if any(r.dtype != x.dtype for r in self.running):
            raise ValueError(f"batch_norm: running_mean and running_var must have x's dtype "
                             f"{x.dtype} (the kernels take one real type, on every device); got "
                             f"{self.running[0].dtype}, {self.running[1].dtype}")
        self.x3 = self._rows(x)
        self.M = self.x3.shape[0] * self.x3.shape[2]
        if self.training and self.M < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel, "
                             f"got x of shape {x.shape}")
        self.gamma = gamma

    def _rows(self, a):
        """NCHW ``a`` as C-contiguous (N, C, H * W): both paths index and sum it row by row."""
        N, C, H, W = a.shape  # not reshape(N, C, -1): that is ambiguous for an empty batch
        return self.dev.xp.ascontiguousarray(a).reshape(N, C, H * W)

    def forward_cpu(self, x, gamma, beta):
        # Channel by channel: threads (``threads.over``) take blocks of channels.
        C = x.shape[1]
        self.mean, self.invstd = np.empty((2, C), x.dtype)
        var, y = np.empty(C, x.dtype), np.empty_like(self.x3)
        threads.over(lambda cs: self._forward_channels(gamma, beta, var, y, cs), C, x.size)
        if self.training:
            M = self.M
            for r, stat in zip(self.running, (self.mean, var * (M / (M - 1)))):
                r *= 1 - self.momentum
                r += self.momentum * stat.astype(r.dtype)
        return y.reshape(x.shape)

    def _forward_channels(self, gamma, beta, var, y, cs):
        """y, the mean, var and 1/std of channels ``cs``."""
        x3, M, y = self.x3[:, cs], self.M, y[:, cs]
        if not self.training:
            mean, var[cs] = (r[cs].astype(x3.dtype) for r in self.running)
        else:
            mean = x3.sum(axis=2).sum(axis=0) / M  # NumPy sums pairwise along the contiguous axis
            np.subtract(x3, mean[:, None], out=y)  # the deviations, made into y in place below
            var[cs] = _rowdot(np, y, y) / M
        self.mean[cs], self.invstd[cs] = mean, 1 / np.sqrt(var[cs] + self.eps)
        # One new array, no saved deviations: the backward recomputes them from x (which the
        # graph keeps anyway), halving the memory batch norm holds for it.
        if not self.training:
            np.subtract(x3, mean[:, None], out=y)
        scale = gamma[cs] * self.invstd[cs]
        y *= scale[:, None]
        y += beta[cs, None]
        self._relu_cpu(y)

    def _relu_cpu(self, y):
        """BatchNormReLU's ReLU, in place; nothing here."""

    # The elementwise kernels of each direction; BatchNormReLU's fuse the ReLU.
    relu, forward_name, dx_name = 0, "bn_forward", "bn_backward_dx"

    def forward_kernel(self, x, gamma, beta):
        dev, x3, (N, C, L) = self.dev, self.x3, self.x3.shape
        stats = dev.xp.empty((3, C), dtype=x3.dtype)  # mean, invstd, scale
        if self.training:  # one pass over x, each channel split over B blocks
            B = splits(self.M)
            partial = dev.xp.empty((2, C, B), dtype=x3.dtype)
            launch(dev, "norm", "bn_split_sums", (x3, partial, N, C, L, B), grid=(B, C))
            launch(dev, "norm", "bn_split_statistics",
                   (partial, x3, gamma, *self.running, stats, C, L, B, self.M, self.momentum,
                    self.eps), n=C)
        else:  # the running statistics (bn_statistics reads neither sum nor moments)
            launch(dev, "norm", "bn_statistics", (gamma, gamma, gamma, *self.running, stats, C,
                                                  self.M, self.momentum, self.eps, 0), n=C)
        self.mean, self.invstd, self.scale = stats
        self.beta = beta
        y = dev.xp.empty_like(x3)
        launch(dev, "norm", self.forward_name, (x3, self.mean, self.scale, beta, y, C, L, y.size),
               n=y.size)
        return y.reshape(x.shape)

    def backward_cpu(self, gy):
        gy3, C = self._rows(gy), gy.shape[1]
        dx, (dgamma, dbeta) = np.empty_like(gy3), np.empty((2, C), gy.dtype)
        threads.over(lambda cs: self._backward_channels(gy3, dx, dgamma, dbeta, cs), C, gy.size)
        return dx.reshape(gy.shape), dgamma, dbeta

    def _backward_channels(self, gy3, dx, dgamma, dbeta, cs):
        """dx, dgamma and dbeta of channels ``cs``."""
        M, invstd, dx = self.M, self.invstd[cs], dx[:, cs]
        d = self.x3[:, cs] - self.mean[cs, None]
        gy3 = self._relu_grad_cpu(gy3[:, cs], d, cs)
        dbeta[cs], dgd = gy3.sum(axis=2).sum(axis=0), _rowdot(np, gy3, d)
        dgamma[cs], a = dgd * invstd, self.gamma[cs] * invstd  # dgd = sum(gy * (x - mean))
        # Training: dx = a * (gy - k1 - (x - mean) * k2), k1 = dbeta / M, k2 = invstd dgamma / M
        # (the batch statistics depend on x); eval: the statistics are constants, dx = a * gy.
        if self.training:  # ((gy - k1) - d * k2) * a, in place in dx
            k1, k2 = dbeta[cs] / M, invstd * dgamma[cs] / M
            np.multiply(d, -k2[:, None], out=dx)
            dx += gy3
            dx -= k1[:, None]
            dx *= a[:, None]
        else:
            np.multiply(gy3, a[:, None], out=dx)

    def _relu_grad_cpu(self, gy3, d, cs):
        """BatchNormReLU's gradient through its ReLU; gy3 as it is here."""
        return gy3

    def backward_kernel(self, gy):
        dev, gy3, (N, C, L) = self.dev, self._rows(gy), self.x3.shape
        B = splits(self.M)
        zargs = (self.mean, self.scale, self.beta)
        partial = dev.xp.empty((2, C, B), dtype=gy3.dtype)  # dbeta, sum(gz * (x - mean))
        launch(dev, "norm", "bn_backward_sums",
               (self.x3, gy3, *zargs, partial, N, C, L, B, self.relu), grid=(B, C))
        coef = dev.xp.empty((5, C), dtype=gy3.dtype)  # dgamma, a, k1, k2, dbeta
        launch(dev, "norm", "bn_split_coefficients",
               (partial, self.gamma, self.invstd, coef, C, B, self.M, int(self.training)), n=C)
        dgamma, a, k1, k2, dbeta = coef
        dx = dev.xp.empty_like(gy3)
        launch(dev, "norm", self.dx_name, (self.x3, gy3, *zargs[:3 if self.relu else 1], a, k1,
                                           k2, dx, C, L, dx.size, int(self.training)), n=dx.size)
        return dx.reshape(gy.shape), dgamma, dbeta  # views of coef: no copies


# Blocks per channel of the kernel path's split sums: about SPLIT_ELEMENTS elements a block (a few a
# thread), at most MAX_SPLITS; a function of the shape alone, so the sums' order is fixed.
SPLIT_ELEMENTS, MAX_SPLITS = 8 * BLOCK, 64


def splits(M):
    """Blocks per channel (B) over the ``M`` values of a channel in the kernel path's sums."""
    return max(1, min(M // SPLIT_ELEMENTS, MAX_SPLITS))


class BatchNormReLU(BatchNorm):
    """``relu(batch_norm(x, ...))`` as one op (``batch_norm(..., relu=True)``). It keeps x, not
    its output: the backward recomputes z = the BN output from x, and the ReLU's mask is z > 0.
    NumPy path: BatchNorm's operations in BatchNorm's order, then the ReLU in place, so its
    numbers are batch_norm's followed by relu's. Kernel path: BatchNorm's, with the ReLU fused into
    its elementwise kernels (three launches each way where the two ops take four and four)."""

    relu, forward_name, dx_name = 1, "bn_relu_forward", "bn_relu_backward_dx"

    def forward_cpu(self, x, gamma, beta):
        self.beta = beta
        return super().forward_cpu(x, gamma, beta)

    def _relu_cpu(self, y):
        np.maximum(y, 0, out=y)

    def _relu_grad_cpu(self, gy3, d, cs):
        # z as the forward made it: the same operations, so the same bits and the same mask.
        z = d * (self.gamma[cs] * self.invstd[cs])[:, None]
        z += self.beta[cs, None]
        return gy3 * (z > 0)


def batch_norm(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5,
               relu=False):
    """Normalise each channel of NCHW ``x``, then scale by ``gamma`` and shift by ``beta``;
    ``relu``: then the ReLU, fused into one op (``BatchNormReLU``: fewer launches, and x is
    the only activation it keeps).

    ``running_mean`` / ``running_var``: (C,) arrays (or Tensors) on x's device, updated in place
    when ``training``."""
    op = BatchNormReLU if relu else BatchNorm
    return op(running_mean, running_var, training, momentum, eps)(x, gamma, beta)
