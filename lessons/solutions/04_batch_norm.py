"""Reference solution of lesson 4's exercise (graded by checks.check_batch_norm_backward)."""
import numpy as np


def batch_norm_backward(x, gamma, gy, eps):
    axes = (0, 2, 3)  # the statistics of a channel run over the batch and the pixels
    mean = x.mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * inv_std
    gbeta = gy.sum(axis=axes)
    ggamma = (gy * xhat).sum(axis=axes)
    # x reaches y directly and through the mean and the variance; summing the three paths:
    # gx = gamma / sigma * (gy - mean(gy) - xhat * mean(gy * xhat)), means per channel.
    gx = (gamma[:, None, None] * inv_std
          * (gy - gy.mean(axis=axes, keepdims=True)
             - xhat * (gy * xhat).mean(axis=axes, keepdims=True)))
    return gx, ggamma, gbeta
