"""Convolutions: dense, strided, atrous (dilated), grouped, depthwise, pointwise (paper Sec. 3.1).

Two ops: ``DepthwiseConv2d`` for depthwise convs and ``Conv2d`` for all others; ``conv2d`` picks
one from the geometry, and the named wrappers below are what the models read. Each has two paths
(ARCHITECTURE.md s. 2 and 3):
- NumPy (``cpu``): im2col + one batched GEMM for dense/grouped convs, a plain GEMM without im2col
  for 1x1 stride-1 convs, and a loop over the kh*kw taps for depthwise convs. Each tap is clipped
  to the output rows/columns whose input lies inside the image, so nothing is ever padded, and a
  tap that only sees padding costs nothing: it gets no column rows and its weights stay out of the
  GEMM (ASPP rate 36 on a 33x33 map, or rate 12 on a 9x9 one, degenerates to a 1x1 conv, as
  DeepLabv3 Sec. 3.3 notes, and costs what a 1x1 conv costs). Where the taps that do see the
  image still see much padding (the ASPP's 3x3 convs at rate 6 on a 17x17 map: 42% of im2col's
  multiply-adds are by zeros), ``TapConv2d`` runs one GEMM per tap over just its outputs on the
  image instead; and on wide maps a stride-1 depthwise conv runs as ``FlatDepthwiseConv2d``, its
  taps as multiply-adds of whole maps laid out flat.
- kernels (``cuda``, ``emu``): ``kernels/conv.cu`` builds the same column matrix (im2col) and
  scatters it back (col2im); the GEMM goes through ``xp.matmul``; depthwise convs run direct
  kernels. 1x1 stride-1 convs are the same GEMM as on the NumPy path.
"""
from collections import namedtuple

import numpy as np

from .. import threads
from ..function import Function
from ..kernels import BLOCK, DW_HALO, DW_RMAX, DW_TW, MAX_GRID, launch

Geometry = namedtuple("Geometry", "N C H W Cout kh kw sh sw ph pw dh dw Ho Wo groups")


def _pair(v, name):
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(a, int) for a in pair):
        raise ValueError(f"conv2d: {name} must be an int or an (h, w) pair of ints, got {v!r}")
    return pair


def conv_output_size(size, k, stride=1, padding=0, dilation=1):
    """floor((size + 2p - d(k-1) - 1) / s) + 1, as PyTorch and Caffe define it (513 -> 257 ...)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _geometry(xs, ws, bs, stride, padding, dilation, groups):
    """Check every shape and hyper-parameter before any work; raise ValueError naming them."""
    (sh, sw), (ph, pw), (dh, dw) = (_pair(stride, "stride"), _pair(padding, "padding"),
                                    _pair(dilation, "dilation"))
    if len(xs) != 4 or len(ws) != 4:
        raise ValueError(f"conv2d: need x (N, C, H, W) and w (Cout, Cin/groups, kh, kw), got "
                         f"x {xs} and w {ws}")
    if min(sh, sw) < 1 or min(dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv2d: stride {(sh, sw)} and dilation {(dh, dw)} must be positive and "
                         f"padding {(ph, pw)} non-negative")
    (N, C, H, W), (Cout, cg, kh, kw) = xs, ws
    if not isinstance(groups, int) or groups < 1 or C % groups or Cout % groups:
        raise ValueError(f"conv2d: groups={groups} must divide the input channels ({C}) and the "
                         f"output channels ({Cout}); x {xs}, w {ws}")
    if cg * groups != C:
        raise ValueError(f"conv2d: channel mismatch: x {xs} has {C} channels but w {ws} expects "
                         f"{cg} per group x {groups} groups = {cg * groups}")
    if bs is not None and tuple(bs) != (Cout,):
        raise ValueError(f"conv2d: bias of shape {tuple(bs)} for {Cout} output channels")
    Ho, Wo = conv_output_size(H, kh, sh, ph, dh), conv_output_size(W, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: kernel {(kh, kw)} with dilation {(dh, dw)} spans "
                         f"{(dh * (kh - 1) + 1, dw * (kw - 1) + 1)}, larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} of x {xs}")
    # The kernels compute input rows o*s - p + i*d in 32-bit int, with o*s + i*d below H + 2p
    # (columns alike): refused on every device, so all of them accept the same convolutions.
    if max(H + 2 * ph, W + 2 * pw) > np.iinfo(np.int32).max:
        raise ValueError(f"conv2d: the padded input {(H + 2 * ph, W + 2 * pw)} of x {xs} exceeds "
                         f"the 32-bit indices of the kernels")
    return Geometry(N, C, H, W, Cout, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, groups)


def _tap_ranges(n_in, n_out, k, s, p, d):
    """Per tap i along one axis: (output slice, input slice) of the outputs whose input row
    o*s + i*d - p lies inside [0, n_in), or None when there are none (the tap sees only padding)."""
    ranges = []
    for i in range(k):
        off = i * d - p
        lo, hi = max(0, -(off // s)), min(n_out, (n_in - 1 - off) // s + 1)
        ranges.append((slice(lo, hi), slice(lo * s + off, (hi - 1) * s + off + 1, s))
                      if hi > lo else None)
    return ranges


def _taps(g):
    """(flat tap index, output (rows, cols) slices, input (rows, cols) slices) of live taps."""
    rows = _tap_ranges(g.H, g.Ho, g.kh, g.sh, g.ph, g.dh)
    cols = _tap_ranges(g.W, g.Wo, g.kw, g.sw, g.pw, g.dw)
    return [(i * g.kw + j, (r[0], c[0]), (r[1], c[1]))
            for i, r in enumerate(rows) for j, c in enumerate(cols) if r and c]


def _is_pointwise(g):
    return g.kh == g.kw == g.sh == g.sw == 1 and g.ph == g.pw == 0


def _is_depthwise(g):
    """One input channel per group (Cout = C * multiplier), and not a 1x1 conv (a GEMM)."""
    return g.groups == g.C and not _is_pointwise(g)


def _geom_args(g):
    return (g.N, g.C, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, g.Ho, g.Wo)


def _n_taps(g, live):
    return g.kh * g.kw if live is None else len(live)


def _on_image(g, live):
    """The share of im2col's multiply-adds over the ``live`` taps whose input lies on the image
    (the rest multiply padding: zeros)."""
    pixels = sum((o[0].stop - o[0].start) * (o[1].stop - o[1].start) for _, o, _ in live)
    return pixels / max(1, len(live) * g.Ho * g.Wo)


class _Conv(Function):
    """What both convolutions share: the geometry (checked by ``conv2d``, which picks the class
    from it; its dtypes are the base's rule, ``reals``) and the bias, added to the output of either
    path."""

    name, reals = "conv2d", ("x", "w", "b")

    def __init__(self, geometry):
        self.g = geometry

    def _add_bias(self, y, b):
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def _bias_grad(self, gy):
        return gy.sum(axis=(0, 2, 3)) if len(self.needs_grad) > 2 and self.needs_grad[2] else None


class Conv2d(_Conv):
    """Dense, strided, atrous, grouped and 1x1 convs: columns (im2col), then GEMMs over the groups.

    NumPy path: columns (N, groups, C/groups*taps, Ho*Wo) of the live taps, one batched GEMM
    through ``xp.matmul`` (a 1x1 stride-1 conv is that GEMM on x itself); it keeps the columns.
    Threads (``threads.over``) split im2col and col2im by channels, each GEMM by output rows.
    Kernel path: columns (C*taps, N*Ho*Wo), every image in a row, so the forward, the weight
    gradient and the column gradient are each one GEMM per group over the whole batch (a plain
    GEMM when groups = 1, through cuBLAS without copies of transposed operands); the output and
    the incoming gradient change between (N, Cout, .) and (Cout, N, .) with one copy each. It
    keeps x, not the columns (kh*kw times larger), and builds them again for the backward; for a
    1x1 stride-1 conv the columns are x with its first two axes swapped.
    """

    def forward_cpu(self, x, w, b=None):
        # Only the taps that see the image: a tap that sees only padding would multiply zeros.
        self.live = None if _is_pointwise(self.g) else _taps(self.g)
        g = self.g
        shape = (g.N, g.groups, g.C // g.groups * _n_taps(g, self.live), g.Ho * g.Wo)
        if _is_pointwise(g):
            self.cols = x.reshape(shape)
        else:
            self.cols = BUFFERS.take(shape, x.dtype)
            threads.over(lambda cs: self._im2col_cpu(x, cs), g.C // g.groups, self.cols.size)
        self.pooled = None if _is_pointwise(g) else self.cols  # BUFFERS takes it back in release
        self.w = self._gemm_weight(w)
        y = np.empty((g.N, g.groups, g.Cout // g.groups, g.Ho * g.Wo), x.dtype)
        threads.over(lambda rows: np.matmul(self.w[:, rows], self.cols, out=y[:, :, rows]),
                     g.Cout // g.groups, self._gemm_size())
        return self._add_bias(y.reshape(g.N, g.Cout, g.Ho, g.Wo), b)

    def backward_cpu(self, gy):
        g = self.g
        gb = self._bias_grad(gy)
        G = g.groups
        gy = np.ascontiguousarray(gy).reshape(g.N, G, g.Cout // G, g.Ho * g.Wo)
        gx = gw = None
        if self.needs_grad[0]:
            gx = np.empty((g.N, g.C, g.H, g.W), gy.dtype)
            threads.over(lambda cs: self._input_grad_channels(gy, gx, cs), g.C // G,
                         self._gemm_size())
        if self.needs_grad[1]:
            gw_taps = np.empty((G, g.Cout // G, self.cols.shape[2]), gy.dtype)
            threads.over(lambda rows: self._weight_grad_rows(gy, gw_taps, rows), g.Cout // G,
                         self._gemm_size())
            taps = _n_taps(g, self.live)
            gw = gw_taps.reshape(g.Cout, g.C // G, taps)
            if self._dead_taps():  # their weights multiplied zeros: gradient 0
                gw = np.zeros((g.Cout, g.C // G, g.kh * g.kw), gy.dtype)
                gw[:, :, [t for t, _, _ in self.live]] = gw_taps.reshape(g.Cout, g.C // G, taps)
            gw = gw.reshape(g.Cout, g.C // G, g.kh, g.kw)
        return gx, gw, gb

    def _input_grad_channels(self, gy, gx, cs):
        """gx of channels ``cs`` of every group: their rows of the column gradient (a GEMM per
        image and group), then col2im."""
        g, taps = self.g, _n_taps(self.g, self.live)
        wt = self.w.transpose(0, 2, 1)[:, cs.start * taps:cs.stop * taps]
        if _is_pointwise(g):
            np.matmul(wt, gy, out=self._per_group(gx.reshape(g.N, g.C, g.H * g.W))[:, :, cs])
            return
        gcols = np.matmul(wt, gy, out=BUFFERS.take(gy.shape[:2] + wt.shape[1:2] + gy.shape[3:],
                                                   gy.dtype))
        self._col2im_cpu(gcols, self._per_group(gx)[:, :, cs])
        BUFFERS.give(gcols)

    def _weight_grad_rows(self, gy, gw_taps, rows):
        """Rows ``rows`` of each group's weight gradient: the images' GEMMs summed in order (an
        (N, rows, C/G*taps) temporary would be large); an empty batch adds nothing: 0."""
        gw = gw_taps[:, rows]
        if not self.g.N:
            gw.fill(0)
            return
        np.matmul(gy[0, :, rows], self.cols[0].transpose(0, 2, 1), out=gw)
        for n in range(1, self.g.N):
            gw += np.matmul(gy[n, :, rows], self.cols[n].transpose(0, 2, 1))

    def _gemm_size(self):
        """The multiply-adds of a GEMM over the batch, in elements of an element-wise pass: BLAS
        does about 16 multiply-adds in the time a pass moves an element."""
        g = self.g
        return g.N * g.Cout * g.C // g.groups * _n_taps(g, self.live) * g.Ho * g.Wo // 16

    def release(self):
        if getattr(self, "pooled", None) is not None:
            BUFFERS.give(self.pooled)  # the backward is done with the columns
        super().release()

    def forward_kernel(self, x, w, b=None):
        g = self.g
        self.live = None  # all kh*kw taps: the im2col kernel writes every one
        self.x, self.w = x, self._gemm_weight(w)
        y = _gemm(self.dev.xp, self.w, self._columns_kernel(x))  # (G, Cout/G, N*Ho*Wo)
        y = _swap_batch(self.dev.xp, y.reshape(g.Cout, g.N, g.Ho * g.Wo))
        return self._add_bias(y.reshape(g.N, g.Cout, g.Ho, g.Wo), b)

    def backward_kernel(self, gy):
        g, xp = self.g, self.dev.xp
        gb = self._bias_grad(gy)
        gyt = _swap_batch(xp, gy.reshape(g.N, g.Cout, g.Ho * g.Wo))  # (Cout, N, Ho*Wo)
        gyt = gyt.reshape(g.groups, g.Cout // g.groups, g.N * g.Ho * g.Wo)
        gx = gw = None
        if self.needs_grad[1]:
            cols = self._columns_kernel(self.x)
            gw = _gemm(xp, gyt, cols, transpose_b=True).reshape(g.Cout, g.C // g.groups,
                                                                  g.kh, g.kw)
        if self.needs_grad[0]:
            gcols = _gemm(xp, self.w, gyt, transpose_a=True)  # (G, C/G*taps, N*Ho*Wo)
            if _is_pointwise(g):
                gx = _swap_batch(xp, gcols.reshape(g.C, g.N, g.H * g.W))
            else:
                gx = xp.empty((g.N, g.C, g.H, g.W), gy.dtype)  # col2im writes every pixel
                launch(self.dev, "conv", "col2im", (gcols, gx) + _geom_args(g), n=gx.size)
            gx = gx.reshape(g.N, g.C, g.H, g.W)
        return gx, gw, gb

    def _columns_kernel(self, x):
        """The kernel path's columns (groups, C/groups*taps, N*Ho*Wo) of x: im2col's, or for a 1x1
        stride-1 conv x with its first two axes swapped."""
        g = self.g
        if _is_pointwise(g):
            cols = _swap_batch(self.dev.xp, x.reshape(g.N, g.C, g.H * g.W))
        else:
            cols = self.dev.xp.empty((g.C * g.kh * g.kw, g.N * g.Ho * g.Wo), x.dtype)
            launch(self.dev, "conv", "im2col", (x, cols) + _geom_args(g), n=cols.size)
        return cols.reshape(g.groups, g.C // g.groups * g.kh * g.kw, g.N * g.Ho * g.Wo)

    def _dead_taps(self):
        return _n_taps(self.g, self.live) < self.g.kh * self.g.kw

    def _gemm_weight(self, w):
        """w as (groups, Cout/groups, Cin/groups * taps): the live taps' weights only."""
        g = self.g
        w = w.reshape(g.Cout, g.C // g.groups, g.kh * g.kw)
        if self._dead_taps():
            w = w[:, :, [t for t, _, _ in self.live]]
        return w.reshape(g.groups, g.Cout // g.groups, g.C // g.groups * _n_taps(g, self.live))

    def _per_group(self, a):
        """NCHW-like ``a`` (N, C, ...) as (N, groups, C/groups, ...): a view."""
        # Not -1 for the channels: ambiguous when there are no images.
        return a.reshape(a.shape[0], self.g.groups, a.shape[1] // self.g.groups, *a.shape[2:])

    def _column_view(self, cols):
        """Columns (N, groups, C/groups*taps, Ho*Wo) as (N, groups, C/groups, taps, Ho, Wo)."""
        g, taps = self.g, len(self.live)
        return cols.reshape(*cols.shape[:2], cols.shape[2] // taps, taps, g.Ho, g.Wo)

    def _im2col_cpu(self, x, cs):
        """self.cols' rows of channels ``cs`` of every group: row (c, t) holds the input under
        live tap t of channel c at every output pixel, zero where it falls on padding."""
        view, x = self._column_view(self.cols)[:, :, cs], self._per_group(x)[:, :, cs]
        view.fill(0)  # padding stays zero
        for k, (_, out, inp) in enumerate(self.live):
            view[:, :, :, k][(..., *out)] = x[(..., *inp)]

    def _col2im_cpu(self, gcols, gx):
        """The adjoint of im2col: add every entry of ``gcols`` (N, groups, channels*taps, Ho*Wo)
        back onto the pixel of ``gx`` (N, groups, channels, H, W) it came from."""
        gx.fill(0)
        view = self._column_view(gcols)
        for k, (_, out, inp) in enumerate(self.live):
            gx[(..., *inp)] += view[:, :, :, k][(..., *out)]


# conv2d runs a geometry as TapConv2d when less than this share of im2col's multiply-adds would
# see the image: one GEMM per tap then does less work, though it copies each tap's inputs and
# output gradients and runs each GEMM on fewer outputs. Time against im2col's, forward and
# backward, on one thread at batch 4 (benchmarks/conv_algorithms.py, benchmarks/README.md): 0.5x
# and 0.6x at 58% on the image (the ASPP's rate 6 on 17x17), 0.7x and 0.85x at 88%, the same at
# 92%, 1.3x and 1.4x at 98% (the decoder's 3x3 on 65x65).
TAPS_BELOW = 0.9


class TapConv2d(Conv2d):
    """A dense (or grouped) conv as one GEMM per live tap, each over just the outputs whose input
    lies on the image: no multiply by padding, no column matrix (NumPy path; the kernel path is
    Conv2d's). Every output adds its taps' products in tap order. It keeps each tap's input as a
    contiguous copy for the weight gradient. Threads (``threads.over``) split the forward and the
    input gradient by images, the weight gradient by taps: every number is the same on any number
    of threads."""

    def forward_cpu(self, x, w, b=None):
        g = self.g
        self.live = _taps(g)
        # (taps, groups, Cout/groups, Cin/groups): each tap's weights contiguous for the GEMM.
        self.wt = w.reshape(g.groups, g.Cout // g.groups, g.C // g.groups, g.kh * g.kw)
        self.wt = np.ascontiguousarray(self.wt.transpose(3, 0, 1, 2))
        self.inputs_on_image = [np.empty(self._per_group(x)[(..., *inp)].shape, x.dtype)
                                for _, _, inp in self.live]
        y = np.empty((g.N, g.Cout, g.Ho, g.Wo), x.dtype)
        threads.over(lambda ns: self._forward_images(x, y, ns), g.N, self._gemm_size())
        return self._add_bias(y, b)

    def _forward_images(self, x, y, ns):
        """y's images ``ns``: each tap's product added onto its outputs, from zero."""
        xg, yg = self._per_group(x[ns]), self._per_group(y[ns])
        yg.fill(0)
        for (t, out, inp), xt in zip(self.live, self.inputs_on_image):
            xt[ns] = xg[(..., *inp)]
            yg[(..., *out)] += self._tap_gemm(self.wt[t], xt[ns], yg.shape[2])

    def backward_cpu(self, gy):
        g = self.g
        gyg = self._per_group(gy)
        grads_on_image = [np.empty(gyg[(..., *out)].shape, gy.dtype) for _, out, _ in self.live]
        gx = np.empty((g.N, g.C, g.H, g.W), gy.dtype) if self.needs_grad[0] else None
        threads.over(lambda ns: self._input_grad_images(gyg, grads_on_image, gx, ns), g.N,
                     self._gemm_size())
        gw = None
        if self.needs_grad[1]:
            gw = np.zeros((g.groups, g.Cout // g.groups, g.C // g.groups, g.kh * g.kw), gy.dtype)
            threads.over(lambda ks: self._weight_grad_taps(grads_on_image, gw, ks),
                         len(self.live), self._gemm_size())
            gw = gw.reshape(g.Cout, g.C // g.groups, g.kh, g.kw)
        return gx, gw, self._bias_grad(gy)

    def _input_grad_images(self, gyg, grads_on_image, gx, ns):
        """For images ``ns``: each tap's output gradient on the image, copied for the weight
        gradient, and gx, each tap's product with the weights added onto its inputs, from zero."""
        for (_, out, _), gt in zip(self.live, grads_on_image):
            gt[ns] = gyg[ns][(..., *out)]
        if gx is None:
            return
        gxg = self._per_group(gx[ns])
        gxg.fill(0)
        for (t, _, inp), gt in zip(self.live, grads_on_image):
            gxg[(..., *inp)] += self._tap_gemm(self.wt[t].swapaxes(1, 2), gt[ns], gxg.shape[2])

    def _weight_grad_taps(self, grads_on_image, gw, ks):
        """The weight gradients of live taps ``ks``: per tap, the images' GEMMs summed in order;
        no images add nothing (gw stays 0)."""
        for k in range(ks.start, ks.stop):
            t = self.live[k][0]
            gt, xt = grads_on_image[k], self.inputs_on_image[k]
            for n in range(self.g.N):
                gw[..., t] += np.matmul(self._flat(gt[n]), self._flat(xt[n]).swapaxes(1, 2))

    def _tap_gemm(self, wt, a, rows):
        """wt (groups, rows, K) times each image of ``a`` (images, groups, K, h, w), shaped like
        ``a`` with ``rows`` channels a group."""
        return np.matmul(wt, self._flat(a)).reshape(*a.shape[:2], rows, *a.shape[3:])

    @staticmethod
    def _flat(a):
        """(..., h, w) -> (..., h*w): the GEMMs' outputs as one axis (a view of a copy we made)."""
        return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])

    def _gemm_size(self):
        """As Conv2d's, over the outputs each live tap has on the image."""
        return int(super()._gemm_size() * _on_image(self.g, self.live))


class _Buffers:
    """The NumPy path's largest arrays (columns and their gradients), kept from one step to the
    next. An array above glibc's largest mmap threshold (32 MiB) is mapped afresh at every
    allocation, and each of its pages faulted in and zeroed by the kernel: at 257x257 that was
    about 45 ms of system time a step. ``take`` gives back such an array of the shape asked for
    if one was returned (``give``), else a new one (uninitialised); smaller ones are left to
    malloc, which reuses them anyway. At most ``limit`` bytes are kept."""

    def __init__(self, smallest=32 << 20, limit=1 << 30):
        self.smallest, self.limit, self.free = smallest, limit, {}

    def take(self, shape, dtype):
        kept = self.free.get((tuple(shape), np.dtype(dtype)))
        return kept.pop() if kept else np.empty(shape, dtype)

    def give(self, a):
        kept = sum(b.nbytes for arrays in self.free.values() for b in arrays)
        if a.nbytes >= self.smallest and a.base is None and kept + a.nbytes <= self.limit:
            self.free.setdefault((a.shape, a.dtype), []).append(a)


BUFFERS = _Buffers()


def _swap_batch(xp, a):
    """(A, B, L) -> a C-contiguous (B, A, L): one copy (NCHW and the GEMMs' channels-first)."""
    return xp.ascontiguousarray(a.transpose(1, 0, 2))


def _gemm(xp, a, b, transpose_a=False, transpose_b=False):
    """a[g] @ b[g] over the leading (groups) axis, an operand transposed as asked. One group (every
    conv but a grouped one) is a plain 2-D GEMM: cuBLAS takes a transposed operand as it is,
    where a batched matmul would copy it."""
    a = a.swapaxes(-1, -2) if transpose_a else a
    b = b.swapaxes(-1, -2) if transpose_b else b
    if a.shape[0] == 1:
        return (a[0] @ b[0])[None]
    return xp.matmul(a, b)


# -- depthwise -------------------------------------------------------------------------------
# The NumPy path works channels-last: every tap is then a multiply-add whose innermost loop runs
# over channels (and whole rows), not over a handful of output columns; on DeepLab's small feature
# maps that saves more than the transposes cost. A few images at a time keep the working set in
# cache (one image at the paper's sizes); on small maps, several images per NumPy call save the
# per-call overhead that dominates there (benchmarks/README.md has the figures). 1 MiB: one core's
# L2 cache on a typical x86 server.
CHUNK_BYTES = 1 << 20


def _image_chunks(g, itemsize, images=None):
    """Slices of ``images`` (default: all) whose channels-last input takes about CHUNK_BYTES (at
    least one image). The step is a function of the whole geometry, never of a thread's share:
    the weight gradient's sums over images keep one order however the work is split."""
    images = images or slice(0, g.N)
    step = max(1, CHUNK_BYTES // (g.H * g.W * g.C * itemsize))
    return [slice(n, min(n + step, images.stop)) for n in range(images.start, images.stop, step)]


def _channels_last(a, out):
    """(N, C, H, W) ``a`` into (N, H, W, C) ``out``, 64 channels at a time: a cache-blocked
    transpose, which touches fewer cache lines than one strided copy."""
    for n in range(a.shape[0]):
        for c in range(0, a.shape[1], 64):
            out[n, ..., c:c + 64] = a[n, c:c + 64].transpose(1, 2, 0)
    return out


class DepthwiseConv2d(_Conv):
    """One input channel per group (Cout = C * multiplier): a multiply-add per tap, no GEMM.
    Threads (``threads.over``) split the images, the backward's by chunks (``_image_chunks``):
    each chunk's weight gradient apart, then their sum in chunk order, the order one thread takes,
    so every number is the same on any number of threads."""

    def forward_cpu(self, x, w, b=None):
        g = self.g
        m = g.Cout // g.C  # channel multiplier: output c*m + k reads input channel c
        self.xh = np.empty((g.N, g.H, g.W, g.C), x.dtype)
        self.wt = w.reshape(g.C, m, g.kh * g.kw).transpose(2, 0, 1).copy()  # (taps, C, m)
        y = np.empty((g.N, g.Cout, g.Ho, g.Wo), x.dtype)
        threads.over(lambda ns: self._forward_images(x, y, ns), g.N, x.size)
        return self._add_bias(y, b)

    def _forward_images(self, x, y, ns):
        """y and self.xh for images ``ns``."""
        g, m = self.g, self.g.Cout // self.g.C
        _channels_last(x[ns], self.xh[ns])
        yh = np.zeros((ns.stop - ns.start, g.Ho, g.Wo, g.C, m), x.dtype)
        chunks = _image_chunks(g, x.itemsize, ns)
        buf = np.empty((chunks[0].stop - chunks[0].start, g.Ho, g.Wo, g.C, m), x.dtype)
        for n in chunks:
            for t, out, inp in _taps(g):
                part = buf[: n.stop - n.start, : out[0].stop - out[0].start,
                           : out[1].stop - out[1].start]
                np.multiply(self.xh[(n, *inp)][..., None], self.wt[t], out=part)
                yh[(slice(n.start - ns.start, n.stop - ns.start), *out)] += part
        y[ns] = yh.reshape(-1, g.Ho, g.Wo, g.Cout).transpose(0, 3, 1, 2)

    def backward_cpu(self, gy):
        g = self.g
        gx = np.empty((g.N, g.C, g.H, g.W), gy.dtype) if self.needs_grad[0] else None
        chunks = _image_chunks(g, gy.itemsize)
        # The weight gradient of each chunk apart, then their sum in chunk order: the order of
        # one thread that adds each chunk's as it goes.
        parts = np.zeros((len(chunks),) + self.wt.shape, gy.dtype) if self.needs_grad[1] else None
        threads.over(lambda ks: self._backward_chunks(gy, gx, parts, chunks, ks), len(chunks),
                     gy.size)
        gwt = None
        if parts is not None:
            gwt = np.zeros_like(self.wt)  # (taps, C, m)
            for part in parts:
                gwt += part
            gwt = gwt.transpose(1, 2, 0).reshape(g.Cout, 1, g.kh, g.kw)
        return gx, gwt, self._bias_grad(gy)

    def _backward_chunks(self, gy, gx, parts, chunks, ks):
        """gx's images of ``chunks[ks]``, and their weight gradients into ``parts[ks]``."""
        g, m = self.g, self.g.Cout // self.g.C
        ns = slice(chunks[ks.start].start, chunks[ks.stop - 1].stop)
        gyh = _channels_last(gy[ns], np.empty((ns.stop - ns.start, g.Ho, g.Wo, g.Cout), gy.dtype))
        gyh = gyh.reshape(-1, g.Ho, g.Wo, g.C, m)
        gxh = None if gx is None else np.zeros((ns.stop - ns.start, g.H, g.W, g.C), gy.dtype)
        for k in range(ks.start, ks.stop):
            n = slice(chunks[k].start - ns.start, chunks[k].stop - ns.start)
            for t, out, inp in _taps(g):
                if gxh is not None:
                    gxh[(n, *inp)] += np.einsum("nhwcm,cm->nhwc", gyh[(n, *out)], self.wt[t])
                if parts is not None:
                    parts[k, t] += np.einsum("nhwcm,nhwc->cm", gyh[(n, *out)],
                                             self.xh[(chunks[k], *inp)])
        if gx is not None:
            gx[ns] = gxh.transpose(0, 3, 1, 2)

    def forward_kernel(self, x, w, b=None):
        g = self.g
        self.x, self.w = x, w
        y = self.dev.xp.empty((g.N, g.Cout, g.Ho, g.Wo), x.dtype)
        _depthwise_launch(self.dev, "forward", (x, w, y), g, (g.Ho, g.Wo), (g.H, g.W))
        return self._add_bias(y, b)

    def backward_kernel(self, gy):
        g, xp = self.g, self.dev.xp
        gx = gw = None
        if self.needs_grad[0]:
            gx = xp.empty(self.x.shape, gy.dtype)
            _depthwise_launch(self.dev, "backward_input", (gy, self.w, gx), g, (g.H, g.W),
                              (g.Ho, g.Wo))
        if self.needs_grad[1]:
            gw = xp.empty(self.w.shape, gy.dtype)
            _depthwise_launch(self.dev, "backward_weight", (self.x, gy, gw), g, (g.Ho, g.Wo),
                              (g.H, g.W))
        return gx, gw, self._bias_grad(gy)


# conv2d runs a stride-1 depthwise conv (multiplier 1) as FlatDepthwiseConv2d on cpu when its
# output rows are at least this long. DepthwiseConv2d's innermost loops run over the channels, a
# few dozen on the wide maps of the entry flow, FlatDepthwiseConv2d's over a channel's whole map.
# Time against DepthwiseConv2d's, forward + backward, one thread, batch 4
# (benchmarks/conv_algorithms.py, benchmarks/README.md): 0.3-0.5x on 129x129 and 65x65 maps with
# 16-64 channels; on 33x33, 0.7x with 32 channels, 0.9x with 182, 1.0x with 728; 1.2x on 17x17
# and 1.4x on 9x9 with 182. Below 48 columns the default preset's maps (33x33 and smaller) keep
# DepthwiseConv2d, and with it their recorded run (FlatDepthwiseConv2d's weight gradient sums in
# another order), at about 1% of its step.
FLAT_MIN_WIDTH = 48


class FlatDepthwiseConv2d(DepthwiseConv2d):
    """A stride-1 depthwise conv (multiplier 1) over the zero-padded input laid out flat, channel
    by channel (NumPy path; the kernel path is DepthwiseConv2d's). Output (h, w) sits at h*Wp + w
    of rows Wp = W + 2*pw long, and live tap (i, j) reads its input i*dh*Wp + j*dw further on: each
    tap is one multiply and one add of contiguous slices as long as the map. The last Wp - Wo
    values of each row are computed and dropped (their gradient is 0). The forward and the input
    gradient add the same products in the same order as DepthwiseConv2d (a product with padding
    adds 0); the weight gradient sums each channel's products image by image. Threads
    (``threads.over``) split the channels: every number is the same on any number of threads."""

    def forward_cpu(self, x, w, b=None):
        g = self.g
        # (live tap, where its input starts relative to the output, in the flat padded map)
        self.tap_offsets = [(t, t // g.kw * g.dh * self._row() + t % g.kw * g.dw)
                            for t, _, _ in _taps(g)]
        self.w_taps = w.reshape(g.C, g.kh * g.kw)
        self.xp = np.empty((g.N, g.C, (g.H + 2 * g.ph) * self._row() + (g.kw - 1) * g.dw),
                           x.dtype)
        y = np.empty((g.N, g.C, g.Ho, g.Wo), x.dtype)
        threads.over(lambda cs: self._forward_channels(x, y, cs), g.C, x.size)
        return self._add_bias(y, b)

    def _row(self):
        return self.g.W + 2 * self.g.pw

    def _padded(self, a):
        """The (..., H, W) image inside ``a`` (..., H + 2*ph, Wp) laid out flat: a view."""
        g = self.g
        Hp = g.H + 2 * g.ph  # not -1 in the reshape: ambiguous when there are no images
        rows = a[..., :Hp * self._row()].reshape(*a.shape[:-1], Hp, self._row())
        return rows[..., g.ph:g.ph + g.H, g.pw:g.pw + g.W]

    def _chunks(self, cs, itemsize):
        """Slices of the channels ``cs`` whose flat padded maps take about CHUNK_BYTES."""
        step = max(1, CHUNK_BYTES // (self.xp.shape[2] * itemsize))
        return [slice(c, min(c + step, cs.stop)) for c in range(cs.start, cs.stop, step)]

    def _forward_channels(self, x, y, cs):
        """y and self.xp for channels ``cs``."""
        g, L = self.g, self.g.Ho * self._row()
        self.xp[:, cs].fill(0)
        self._padded(self.xp[:, cs])[...] = x[:, cs]
        for c in self._chunks(cs, x.dtype.itemsize):
            acc, part = (np.empty((c.stop - c.start, L), x.dtype) for _ in range(2))
            for n in range(g.N):
                for k, (t, off) in enumerate(self.tap_offsets):
                    np.multiply(self.xp[n, c, off:off + L], self.w_taps[c, t, None],
                                out=part if k else acc)
                    if k:
                        acc += part
                y[n, c] = acc.reshape(c.stop - c.start, g.Ho, self._row())[..., :g.Wo]

    def backward_cpu(self, gy):
        g = self.g
        gx = np.empty((g.N, g.C, g.H, g.W), gy.dtype) if self.needs_grad[0] else None
        gw = np.zeros_like(self.w_taps) if self.needs_grad[1] else None
        threads.over(lambda cs: self._backward_channels(gy, gx, gw, cs), g.C, gy.size)
        gw = None if gw is None else gw.reshape(g.Cout, 1, g.kh, g.kw)
        return gx, gw, self._bias_grad(gy)

    def _backward_channels(self, gy, gx, gw, cs):
        """gx and gw of channels ``cs``: gy laid out on the flat rows (0 past Wo), then per tap
        its product with the weight added onto the input it read, and its dot with that input."""
        g, L = self.g, self.g.Ho * self._row()
        for c in self._chunks(cs, gy.dtype.itemsize):
            gyp = np.zeros((c.stop - c.start, g.Ho, self._row()), gy.dtype)
            gxp = np.empty((c.stop - c.start, self.xp.shape[2]), gy.dtype)
            part = np.empty((c.stop - c.start, L), gy.dtype)
            for n in range(g.N):
                gyp[..., :g.Wo] = gy[n, c]
                flat = gyp.reshape(c.stop - c.start, L)
                gxp.fill(0)
                for t, off in self.tap_offsets:
                    if gx is not None:
                        gxp[:, off:off + L] += np.multiply(flat, self.w_taps[c, t, None], out=part)
                    if gw is not None:
                        gw[c, t] += np.einsum("cp,cp->c", flat, self.xp[n, c, off:off + L])
                if gx is not None:
                    gx[n, c] = self._padded(gxp)


# The tiles of the fast depthwise kernels (kernels/conv.cu): DW_TW columns, DW_TY thread rows of
# `rows` outputs each (at most DW_RMAX), a shared window and the weights in at most DW_HALO reals.
DW_TY = BLOCK // DW_TW


def _depthwise_rows(g, tile, window, backward_input):
    """Outputs per thread (1, 2 or 4) for a tile over ``tile`` = (rows, cols) whose window in
    ``window`` = (rows, cols) fits DW_HALO with the weights; the fewest that still cover the map
    (a 9-row map needs no 32-row tiles), or None: no window fits, or a stride that is not a power
    of two."""
    if any(s & (s - 1) for s in (g.sh, g.sw)):
        return None
    for rows in (DW_RMAX, DW_RMAX // 2, 1):
        if rows > 1 and DW_TY * rows // 2 >= tile[0]:
            continue
        if backward_input:  # the gy rows that a tile of gx gathers from
            span = [min(o, ((t - 1 + (k - 1) * d) + s - 1) // s + 1) for o, t, k, d, s in
                    zip(window, (DW_TY * rows, DW_TW), (g.kh, g.kw), (g.dh, g.dw), (g.sh, g.sw))]
        else:
            span = [min(o, (t - 1) * s + (k - 1) * d + 1) for o, t, k, d, s in
                    zip(window, (DW_TY * rows, DW_TW), (g.kh, g.kw), (g.dh, g.dw), (g.sh, g.sw))]
        if span[0] * span[1] + g.kh * g.kw <= DW_HALO:  # the window, then the weights
            return rows
    return None


def _depthwise_launch(dev, kernel, arrays, g, tile, window):
    """Run the tiled ``depthwise_<kernel>`` (one tile of ``tile``-shaped output per block), or
    its ``_reference`` version where no window fits. backward_weight writes one partial sum per
    (weight, tile) and reduce.cu's channel_sum adds them in a fixed order."""
    m = g.Cout // g.C
    rows = _depthwise_rows(g, tile, window, kernel == "backward_input")
    if rows is None:
        name, out = f"depthwise_{kernel}_reference", arrays[-1]
        if kernel == "backward_weight":  # one block per (output channel, tap)
            launch(dev, "conv", name, arrays + (m,) + _geom_args(g), grid=min(out.size, MAX_GRID))
        else:
            launch(dev, "conv", name, arrays + (m,) + _geom_args(g), n=out.size)
        return
    tiles = (g.N * (g.C if kernel == "backward_input" else g.Cout)
             * -(-tile[0] // (DW_TY * rows)) * -(-tile[1] // DW_TW))
    grid = min(tiles, MAX_GRID)
    if kernel != "backward_weight":
        launch(dev, "conv", f"depthwise_{kernel}", arrays + (m,) + _geom_args(g) + (rows,),
               grid=grid)
        return
    gw = arrays[-1]
    parts = tiles // g.Cout  # partial sums per weight: N * tiles per plane
    part = dev.xp.empty((gw.size, parts), gw.dtype)
    launch(dev, "conv", "depthwise_backward_weight", arrays[:2] + (part, m) + _geom_args(g)
           + (rows,), grid=grid)
    launch(dev, "reduce", "channel_sum", (part, gw, 1, gw.size, parts), grid=gw.size)


# -- the public ops --------------------------------------------------------------------------

def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, NCHW, w (Cout, Cin/groups, kh, kw); ARCHITECTURE.md s. 9.
    Depthwise geometries run ``DepthwiseConv2d`` (on cpu, wide stride-1 ones
    ``FlatDepthwiseConv2d``: FLAT_MIN_WIDTH); those whose taps see much padding ``TapConv2d``
    (on cpu; TAPS_BELOW); all others ``Conv2d``."""
    g = _geometry(x.shape, w.shape, None if b is None else b.shape, stride, padding, dilation,
                  groups)
    op = _op_class(g)(g)
    return op(x, w) if b is None else op(x, w, b)


def _op_class(g):
    if _is_depthwise(g):
        flat = g.sh == g.sw == 1 and g.Cout == g.C and g.Wo >= FLAT_MIN_WIDTH
        return FlatDepthwiseConv2d if flat else DepthwiseConv2d
    if not _is_pointwise(g) and _on_image(g, _taps(g)) < TAPS_BELOW:
        return TapConv2d
    return Conv2d


def atrous_conv2d(x, w, b=None, rate=1, stride=1, groups=1):
    """Atrous convolution with rate r (Sec. 3.1, Eq. 1) and "same" padding r*(k-1)//2."""
    kh, kw = w.shape[2:]
    return conv2d(x, w, b, stride, (rate * (kh - 1) // 2, rate * (kw - 1) // 2), rate, groups)


def depthwise_conv2d(x, w, b=None, rate=1, stride=1):
    """Depthwise atrous conv (Fig. 3 a, c): w (C * multiplier, 1, kh, kw), a filter per channel."""
    return atrous_conv2d(x, w, b, rate, stride, groups=x.shape[1])


def pointwise_conv2d(x, w, b=None):
    """1x1 conv (Fig. 3 b): mixes channels, w (Cout, Cin, 1, 1); a GEMM without im2col."""
    return conv2d(x, w, b)


def separable_conv2d(x, w_depthwise, w_pointwise, rate=1, stride=1):
    """Atrous separable convolution (Fig. 3): depthwise with rate r, then pointwise. The models
    put BN (and, outside the released Xception's pre-activation units, ReLU) between the two
    themselves (ARCHITECTURE.md s. 7)."""
    return pointwise_conv2d(depthwise_conv2d(x, w_depthwise, rate=rate, stride=stride), w_pointwise)
