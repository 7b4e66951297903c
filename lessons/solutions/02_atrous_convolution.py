"""Reference solution of lesson 2's exercise (graded by checks.check_atrous_im2col)."""
import numpy as np


def atrous_conv2d_im2col(x, w, rate):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    pad = rate * (k - 1) // 2  # "same" size: the taps reach rate * (k - 1) / 2 pixels each side
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # One column per output pixel, one row per (channel, tap): tap (i, j) reads x shifted by
    # (i * rate, j * rate), the whole of atrous convolution.
    cols = np.stack([xp[:, :, i * rate:i * rate + h, j * rate:j * rate + wd]
                     for i in range(k) for j in range(k)], axis=2)  # (n, c, k*k, h, w)
    cols = cols.reshape(n, c * k * k, h * wd)
    return (w.reshape(o, c * k * k) @ cols).reshape(n, o, h, wd)
