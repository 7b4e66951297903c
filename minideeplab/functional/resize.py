"""Bilinear resize (PyTorch's ``align_corners`` semantics) and global average pooling.

DeepLab upsamples with ``align_corners=True`` everywhere (ARCHITECTURE.md s. 7), so 33 -> 129 ->
513 line up; global average pooling is ASPP's image-pooling branch. Bilinear resize is separable:
each output row (column) mixes two input rows (columns), so the NumPy path is one matmul per axis
with an interpolation matrix, and the backward applies the transposed matrices.
"""
import functools

import numpy as np

from ..function import Function
from ..kernels import MAX_GRID, RS_CAP, launch
from .reduce import channel_sum


@functools.lru_cache(maxsize=64)
def _axis(n_in, n_out, align_corners):
    """Per output index: source indices i0, i1 and the weight w1 of i1 (that of i0 is 1 - w1)."""
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else 0 * o
    else:  # pixel centres: src = (o + 1/2) * in / out - 1/2, clamped at 0 as PyTorch does
        src = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1).astype(np.int32), src - i0


@functools.lru_cache(maxsize=64)
def _matrix(n_in, n_out, align_corners):
    """The (n_out, n_in) interpolation matrix of one axis."""
    i0, i1, w1 = _axis(n_in, n_out, align_corners)
    A = np.zeros((n_out, n_in))
    np.add.at(A, (np.arange(n_out), i0), 1 - w1)
    np.add.at(A, (np.arange(n_out), i1), w1)
    return A


@functools.lru_cache(maxsize=64)
def _by_input(n_in, n_out, align_corners):
    """The transposed axis as CSR for the gather backward: the outputs ``idx[off[i]:off[i+1]]``
    read input i with weights ``w[off[i]:off[i+1]]``."""
    i0, i1, w1 = _axis(n_in, n_out, align_corners)
    src, w = np.concatenate([i0, i1]), np.concatenate([1 - w1, w1])
    order = np.argsort(src, kind="stable")
    off = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_in))]).astype(np.int32)
    return off, (np.arange(2 * n_out) % n_out)[order].astype(np.int32), w[order]


@functools.lru_cache(maxsize=64)
def _bands(n_in, n_out, align_corners, width, backward):
    """The banded kernels' rows per block over the rows of their output (y forward, gx backward)
    and the (2, bands) table of the source rows [first, end) each band reads (x rows forward, gy
    rows backward): the most rows, halving from all, whose source rows of ``width`` reals fit
    RS_CAP; None where not even one row's do."""
    i0, i1, _ = _axis(n_in, n_out, align_corners)
    if backward:  # input row i is read by the outputs o with i0[o] == i or i1[o] == i
        o = np.arange(n_out)
        lo, hi = np.full(n_in, n_out), np.zeros(n_in, np.int64)
        for i in (i0, i1):
            np.minimum.at(lo, i, o)
            np.maximum.at(hi, i, o + 1)
    else:
        lo, hi = i0, i1 + 1
    band = len(lo)
    while band >= 1:
        starts = np.arange(0, len(lo), band)
        first, end = np.minimum.reduceat(lo, starts), np.maximum.reduceat(hi, starts)
        first = np.where(end > first, first, 0)  # rows nothing reads (downsampling): none
        end = np.maximum(end, first)
        if (end - first).max() * width <= RS_CAP:
            return band, np.stack([first, end]).astype(np.int32)
        band //= 2
    return None


@functools.lru_cache(maxsize=64)
def _span_on_device(dev, n_in, n_out, align_corners, width):
    """The backward's band table on ``dev``: copied once."""
    return dev.asarray(_bands(n_in, n_out, align_corners, width, True)[1])


@functools.lru_cache(maxsize=64)
def _on_device(dev, dtype, tables, n_in, n_out, align_corners):
    """``tables(n_in, n_out, align_corners)`` on ``dev``, weights as ``dtype``: copied once."""
    return [dev.asarray(t, dtype=t.dtype if t.dtype.kind == "i" else dtype)
            for t in tables(n_in, n_out, align_corners)]


def _apply(xp, x, Ah, Aw):
    """Ah @ x @ Aw.T over the last two axes of (N, C, H, W) ``x``: the cheaper axis order."""
    N, C, H, W = x.shape
    (Ho, _), (Wo, _) = Ah.shape, Aw.shape
    Ah, Aw = xp.asarray(Ah, dtype=x.dtype), xp.asarray(Aw, dtype=x.dtype)
    if Ho * H * W + Ho * W * Wo <= H * W * Wo + Ho * H * Wo:  # rows first: a batched matmul,
        t = xp.matmul(Ah, x.reshape(N * C, H, W))               # then one large GEMM
        return (t.reshape(-1, W) @ Aw.T).reshape(N, C, Ho, Wo)
    t = (x.reshape(-1, W) @ Aw.T).reshape(N * C, H, Wo)
    return xp.matmul(Ah, t).reshape(N, C, Ho, Wo)


class ResizeBilinear(Function):
    name, reals = "resize_bilinear", ("x",)

    def __init__(self, size, align_corners):
        self.size, self.align_corners = tuple(int(s) for s in size), bool(align_corners)

    def check(self, x):
        if x.ndim != 4 or len(self.size) != 2 or min(self.size) < 1 or 0 in x.shape[2:]:
            raise ValueError(f"resize_bilinear: x must be (N, C, H, W) and size (H_out, W_out) "
                             f"positive, got {x.shape} and {self.size}")
        self.in_shape = x.shape

    def forward_cpu(self, x):
        (H, W), (Ho, Wo), ac = x.shape[2:], self.size, self.align_corners
        return _apply(self.dev.xp, x, _matrix(H, Ho, ac), _matrix(W, Wo, ac))

    def forward_kernel(self, x):
        y = self.dev.xp.empty(x.shape[:2] + self.size, dtype=x.dtype)
        self._launch("resize_bilinear_forward", _axis, x, y)
        return y

    def backward_cpu(self, gy):
        (H, W), (Ho, Wo), ac = self.in_shape[2:], self.size, self.align_corners
        return _apply(self.dev.xp, gy, _matrix(H, Ho, ac).T, _matrix(W, Wo, ac).T)

    def backward_kernel(self, gy):
        gx = self.dev.xp.empty(self.in_shape, dtype=gy.dtype)
        self._launch("resize_bilinear_backward", _by_input, gy, gx)
        return gx

    def _launch(self, kernel, tables, src, dst):
        """``kernel`` from ``src`` into ``dst`` with the ``tables`` of both axes on the device:
        the banded kernel (a band of dst's rows per block, its source rows in shared memory), or
        the ``_reference`` one (a thread per element) where not even one row's source rows fit."""
        (H, W), (Ho, Wo), ac = self.in_shape[2:], self.size, self.align_corners
        tables = (_on_device(self.dev, src.dtype, tables, H, Ho, ac) +
                  _on_device(self.dev, src.dtype, tables, W, Wo, ac))
        backward = kernel.endswith("backward")
        bands = _bands(H, Ho, ac, Wo if backward else W, backward)
        if bands is None:
            launch(self.dev, "resize", f"{kernel}_reference",
                   (src, *tables, dst, H, W, Ho, Wo, dst.size), n=dst.size)
            return
        band, NC = bands[0], dst.shape[0] * dst.shape[1]
        span = (_span_on_device(self.dev, H, Ho, ac, Wo),) if backward else ()
        launch(self.dev, "resize", kernel, (src, *tables, *span, dst, H, W, Ho, Wo, NC, band),
               grid=min(NC * -(-dst.shape[2] // band), MAX_GRID))


class GlobalAvgPool(Function):
    name, reals = "global_avg_pool", ("x",)

    def forward(self, x):
        if x.ndim != 4 or 0 in x.shape[2:]:
            raise ValueError(f"global_avg_pool: x must be (N, C, H, W) with at least one pixel "
                             f"to average, got {x.shape}")
        self.in_shape = (N, C, H, W) = x.shape
        # The per-(n, c) sums are channel sums of x viewed as (1, N * C, H * W, 1).
        s = channel_sum(x.reshape(1, N * C, H * W, 1), self.dev)
        return (s / (H * W)).reshape(N, C, 1, 1)

    def backward(self, gy):
        return self.dev.xp.broadcast_to(gy / (self.in_shape[2] * self.in_shape[3]), self.in_shape)


def resize_bilinear(x, size, align_corners=True):
    """Bilinear resize of NCHW ``x`` to ``size`` = (H_out, W_out), as PyTorch's
    ``interpolate(mode="bilinear")``."""
    return ResizeBilinear(size, align_corners)(x)


def global_avg_pool(x):
    """Mean over H and W of NCHW ``x``, shape (N, C, 1, 1): ASPP's image pooling (ARCHITECTURE.md
    s. 7)."""
    return GlobalAvgPool()(x)
