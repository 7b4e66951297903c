// Convolution kernels (paper Sec. 3.1, ARCHITECTURE.md s. 5) behind conv2d's kernel path
// (functional/conv.py): im2col / col2im around an xp.matmul GEMM for dense and grouped convs, and
// direct depthwise kernels. Every kernel takes the same geometry: input x (N, C, H, W) in NCHW,
// kernel kh x kw, stride (sh, sw), zero padding (ph, pw), dilation (dh, dw), output Ho x Wo.
// Output row ho under tap row i reads input row ho*sh - ph + i*dh (columns alike); a read outside
// [0, H) x [0, W) is padding and contributes zero.
// Launch: 1-D grid-stride loops over the output's n elements, grid_1d(n) blocks of BLOCK threads,
// except depthwise_backward_weight_reference (one block per weight) and the tiled depthwise
// kernels (one tile per block, last section). Gathers only: no atomics, every result is
// deterministic.

#include "block_reduce.cuh"

// One thread: column element idx = ((((c*kh + i)*kw + j)*N + n)*Ho + ho)*Wo + wo of the
// (C*kh*kw, N*Ho*Wo) column matrix, i.e. the input pixel under tap (i, j) of channel c for output
// pixel (ho, wo) of image n, or 0 on padding. A row holds every image, so one GEMM with the
// weights (Cout, C*kh*kw) covers the batch.
// Launch: 1-D, grid_1d(n), n = C*kh*kw*N*Ho*Wo. Bytes per output element: reads at most 1 real,
// writes 1.
extern "C" __global__ void im2col(const real* __restrict__ x, real* __restrict__ cols, int N,
                                  int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                                  int pw, int dh, int dw, int Ho, int Wo) {
  const int HoWo = Ho * Wo, total = N * C * kh * kw * HoWo, step = gridDim.x * blockDim.x;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int wo = idx % Wo, ho = idx / Wo % Ho, n = idx / HoWo % N, tap = idx / (HoWo * N);
    const int j = tap % kw, i = tap / kw % kh, c = tap / (kw * kh);
    const int h = ho * sh - ph + i * dh, w = wo * sw - pw + j * dw;
    cols[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[((n * C + c) * H + h) * W + w] : (real)0;
  }
}

// The output row (or column) that input position p feeds under tap t, inverting
// p = o*s - pad + t*d, or -1 when it feeds none: the gathers of col2im and
// depthwise_backward_input both walk the taps this way.
__device__ __forceinline__ int tap_output(int p, int t, int pad, int d, int s, int out) {
  const int q = p + pad - t * d;
  return (q < 0 || q % s != 0 || q / s >= out) ? -1 : q / s;
}

// One thread: gx[n, c, h, w] = the sum of the column entries im2col copied from pixel (h, w), i.e.
// over the taps (i, j) with (h + ph - i*dh) a multiple of sh giving an output row in [0, Ho)
// (columns alike), in im2col's layout (C*kh*kw, N*Ho*Wo). Gathering per input pixel instead of
// scattering per column needs no atomics.
// Launch: 1-D, grid_1d(n), n = N*C*H*W. Bytes per output element: reads at most kh*kw reals,
// writes 1.
extern "C" __global__ void col2im(const real* __restrict__ cols, real* __restrict__ gx, int N,
                                  int C, int H, int W, int kh, int kw, int sh, int sw, int ph,
                                  int pw, int dh, int dw, int Ho, int Wo) {
  const int total = N * C * H * W, step = gridDim.x * blockDim.x, HoWo = Ho * Wo;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int w = idx % W, h = idx / W % H, c = idx / (W * H) % C, n = idx / (W * H * C);
    const real* colc = cols + (c * kh * kw * N + n) * HoWo;  // tap (0, 0) of image n
    real s = 0;
    for (int i = 0; i < kh; ++i) {
      const int ho = tap_output(h, i, ph, dh, sh, Ho);
      if (ho < 0) continue;
      for (int j = 0; j < kw; ++j) {
        const int wo = tap_output(w, j, pw, dw, sw, Wo);
        if (wo >= 0) s += colc[(i * kw + j) * N * HoWo + ho * Wo + wo];
      }
    }
    gx[idx] = s;
  }
}

// Depthwise conv with channel multiplier m: output channel co = c*m + k reads input channel c only,
// weights w (C*m, 1, kh, kw). One thread: y[n, co, ho, wo] = sum over taps of x * w.
// Launch: 1-D, grid_1d(n), n = N*C*m*Ho*Wo. Bytes per output element: reads at most kh*kw x values
// and kh*kw weights (cached), writes 1.
extern "C" __global__ void depthwise_forward_reference(const real* __restrict__ x,
                                                       const real* __restrict__ wt,
                                                       real* __restrict__ y, int m, int N, int C,
                                                       int H, int W, int kh, int kw, int sh, int sw,
                                                       int ph, int pw, int dh, int dw, int Ho,
                                                       int Wo) {
  const int HoWo = Ho * Wo, Cm = C * m, total = N * Cm * HoWo, step = gridDim.x * blockDim.x;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int wo = idx % Wo, ho = idx / Wo % Ho, nco = idx / HoWo;
    const int co = nco % Cm, n = nco / Cm;
    const int h0 = ho * sh - ph, w0 = wo * sw - pw;  // the input pixel under tap (0, 0)
    const real* xc = x + (n * C + co / m) * H * W;
    const real* wc = wt + co * kh * kw;
    real s = 0;
    for (int i = 0; i < kh; ++i) {
      const int h = h0 + i * dh;
      if (h < 0 || h >= H) continue;
      for (int j = 0; j < kw; ++j) {
        const int w = w0 + j * dw;
        if (w >= 0 && w < W) s += xc[h * W + w] * wc[i * kw + j];
      }
    }
    y[idx] = s;
  }
}

// One thread: gx[n, c, h, w] = sum over the m output channels c*m + k and over the taps (i, j)
// whose output pixel ((h + ph - i*dh) / sh, (w + pw - j*dw) / sw) exists, of gy * w (a gather:
// no atomics).
// Launch: 1-D, grid_1d(n), n = N*C*H*W. Bytes per output element: reads at most m*kh*kw gy values
// and as many weights, writes 1.
extern "C" __global__ void depthwise_backward_input_reference(const real* __restrict__ gy,
                                                              const real* __restrict__ wt,
                                                              real* __restrict__ gx, int m, int N,
                                                              int C, int H, int W, int kh, int kw,
                                                              int sh, int sw, int ph, int pw,
                                                              int dh, int dw, int Ho, int Wo) {
  const int HoWo = Ho * Wo, total = N * C * H * W, step = gridDim.x * blockDim.x;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const int w = idx % W, h = idx / W % H, nc = idx / (W * H), c = nc % C;
    real s = 0;
    for (int k = 0; k < m; ++k) {
      const real* gyc = gy + (nc * m + k) * HoWo;  // output channel c*m + k of image n
      const real* wc = wt + (c * m + k) * kh * kw;
      for (int i = 0; i < kh; ++i) {
        const int ho = tap_output(h, i, ph, dh, sh, Ho);
        if (ho < 0) continue;
        for (int j = 0; j < kw; ++j) {
          const int wo = tap_output(w, j, pw, dw, sw, Wo);
          if (wo >= 0) s += gyc[ho * Wo + wo] * wc[i * kw + j];
        }
      }
    }
    gx[idx] = s;
  }
}

// One block: gw[co, 0, i, j] = sum over n, ho, wo of gy[n, co, ho, wo] * x[n, co / m, h, w] for
// one (output channel, tap) pair b = co*kh*kw + i*kw + j (a grid-stride loop over the C*m*kh*kw
// pairs). Thread t sums the positions t, t + BLOCK, ... of the N*Ho*Wo outputs (neighbouring
// threads read neighbouring gy), then block_tree_sum adds the block's partial sums in a fixed
// order: no atomics, the result is deterministic.
// Launch: grid min(C*m*kh*kw, MAX_GRID), block BLOCK.
// Bytes per output element: reads N*Ho*Wo gy and as many x values, writes 1 real.
extern "C" __global__ void depthwise_backward_weight_reference(const real* __restrict__ x,
                                                               const real* __restrict__ gy,
                                                               real* __restrict__ gw, int m, int N,
                                                               int C, int H, int W, int kh, int kw,
                                                               int sh, int sw, int ph, int pw,
                                                               int dh, int dw, int Ho, int Wo) {
  __shared__ real partial[BLOCK];
  const int Cm = C * m, pairs = Cm * kh * kw, HoWo = Ho * Wo, HW = H * W, CHW = C * HW;
  for (int b = blockIdx.x; b < pairs; b += gridDim.x) {
    const int co = b / (kh * kw), i = b / kw % kh, j = b % kw;
    const int h0 = i * dh - ph, w0 = j * dw - pw;  // the input pixel of output (0, 0)
    const real* xc = x + co / m * HW;
    const real* gyc = gy + co * HoWo;
    real s = 0;
    for (int q = threadIdx.x; q < N * HoWo; q += blockDim.x) {
      const int n = q / HoWo, p = q % HoWo;
      const int h = p / Wo * sh + h0, w = p % Wo * sw + w0;
      if (h >= 0 && h < H && w >= 0 && w < W)
        s += gyc[n * Cm * HoWo + p] * xc[n * CHW + h * W + w];
    }
    s = block_tree_sum(partial, s);
    if (threadIdx.x == 0) gw[b] = s;
    __syncthreads();  // partial is rewritten by the next pair
  }
}

// -- tiled depthwise kernels (the model's; the *_reference kernels above are their readable
// versions) --------------------------------------------------------------------------------
// A reference thread reads its kh*kw input values from global memory, so each input value is
// read by up to kh*kw threads. Here a block computes a tile of DW_TW x (DW_TY * rows) outputs of
// one (image, channel) plane: it first copies the input window the tile reads (the tile plus its
// halo, clipped to the image: padding is never stored) into shared memory, once, with
// neighbouring threads reading neighbouring addresses, and the channel's kh*kw weights after
// it; each thread then keeps `rows` outputs (rows DW_TY apart) in registers. Tile and window
// origins are divided out once per tile, never in the tap loops. The host picks rows in
// {1, 2, 4} so that window and weights fit DW_HALO reals (functional/conv.py); a geometry whose
// window never fits runs the reference kernels. Each kernel is a grid-stride loop over the tiles.
// DW_TW (tile columns), DW_RMAX (rows per thread at most) and DW_HALO (reals of shared window
// and weights) come from the host with BLOCK (kernels.MACROS).
#define DW_TY (BLOCK / DW_TW)  // thread rows of a block

// The span of input rows (or columns) that outputs [o0, o1) read under k taps d apart, clipped to
// [0, size): [*lo, *lo + *len), *len <= 0 when all of it is padding.
__device__ __forceinline__ void dw_window(int o0, int o1, int s, int p, int k, int d, int size,
                                          int* lo, int* len) {
  *lo = max(o0 * s - p, 0);
  *len = min((o1 - 1) * s - p + (k - 1) * d + 1, size) - *lo;
}

// Copies rows [r0, r0 + hr) x columns [c0, c0 + hc) of the plane src (rows of W) into win (rows
// of hc): thread (ty, tx) takes rows ty, ty + DW_TY, ... and columns tx, tx + DW_TW, ...; and
// the taps filter values of wt into the last taps reals of win.
__device__ __forceinline__ void dw_load(real* win, const real* src, int W, int r0, int hr, int c0,
                                        int hc, const real* wt, int taps) {
  const int tx = threadIdx.x % DW_TW, ty = threadIdx.x / DW_TW;
  for (int r = ty; r < hr; r += DW_TY)
    for (int c = tx; c < hc; c += DW_TW) win[r * hc + c] = src[(r0 + r) * W + c0 + c];
  for (int q = threadIdx.x; q < taps; q += blockDim.x) win[DW_HALO - taps + q] = wt[q];
}

// One block: a tile of y as depthwise_forward_reference computes it (the same sums in the same
// order, so the same bits).
// Launch: grid min(tiles, MAX_GRID), block BLOCK. Bytes per output element: reads about
// window / tile x values and kh*kw / rows weights (cached), writes 1.
extern "C" __global__ void depthwise_forward(const real* __restrict__ x,
                                             const real* __restrict__ wt, real* __restrict__ y,
                                             int m, int N, int C, int H, int W, int kh, int kw,
                                             int sh, int sw, int ph, int pw, int dh, int dw,
                                             int Ho, int Wo, int rows) {
  __shared__ real win[DW_HALO];
  const int tx = threadIdx.x % DW_TW, ty = threadIdx.x / DW_TW, TH = DW_TY * rows, Cm = C * m;
  const int tw = (Wo + DW_TW - 1) / DW_TW, th = (Ho + TH - 1) / TH, tiles = N * Cm * th * tw;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int plane = t / (th * tw), ho0 = t / tw % th * TH, wo0 = t % tw * DW_TW;  // n*Cm + co
    const int co = plane % Cm, n = plane / Cm, wo = wo0 + tx;
    int r0, hr, c0, hc;
    dw_window(ho0, min(ho0 + TH, Ho), sh, ph, kh, dh, H, &r0, &hr);
    dw_window(wo0, min(wo0 + DW_TW, Wo), sw, pw, kw, dw, W, &c0, &hc);
    dw_load(win, x + (n * C + co / m) * H * W, W, r0, hr, c0, hc, wt + co * kh * kw, kh * kw);
    __syncthreads();
    const real* ws = win + DW_HALO - kh * kw;  // the weights
    real acc[DW_RMAX];
    for (int k = 0; k < DW_RMAX; ++k) acc[k] = 0;
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) {
        const int c = wo * sw - pw + j * dw - c0;  // the tap's window column; outside: padding
        if (wo >= Wo || c < 0 || c >= hc) continue;
        const real wv = ws[i * kw + j];
        for (int k = 0; k < DW_RMAX; ++k) {
          const int ho = ho0 + ty + k * DW_TY, r = ho * sh - ph + i * dh - r0;
          if (k < rows && ho < Ho && r >= 0 && r < hr) acc[k] += win[r * hc + c] * wv;
        }
      }
    for (int k = 0; k < rows; ++k) {
      const int ho = ho0 + ty + k * DW_TY;
      if (ho < Ho && wo < Wo) y[(plane * Ho + ho) * Wo + wo] = acc[k];
    }
    __syncthreads();  // the next tile overwrites the window
  }
}

// One block: a tile of gx as depthwise_backward_input_reference computes it (the same sums in
// the same order), gathering, for each of the m output channels of input channel c, from the
// window of gy that the tile reads. Strides are powers of two (sft = log2 s), so the inverse of
// h = ho*s - p + i*d is a mask and a shift, not a division.
// Launch: grid min(tiles, MAX_GRID), block BLOCK. Bytes per output element: reads about
// m * window / tile gy values, writes 1.
extern "C" __global__ void depthwise_backward_input(const real* __restrict__ gy,
                                                    const real* __restrict__ wt,
                                                    real* __restrict__ gx, int m, int N, int C,
                                                    int H, int W, int kh, int kw, int sh, int sw,
                                                    int ph, int pw, int dh, int dw, int Ho,
                                                    int Wo, int rows) {
  __shared__ real win[DW_HALO];
  const int tx = threadIdx.x % DW_TW, ty = threadIdx.x / DW_TW, TH = DW_TY * rows;
  const int tw = (W + DW_TW - 1) / DW_TW, th = (H + TH - 1) / TH, tiles = N * C * th * tw;
  int sfh = 0, sfw = 0;
  while ((1 << sfh) < sh) ++sfh;
  while ((1 << sfw) < sw) ++sfw;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int nc = t / (th * tw), h0 = t / tw % th * TH, w0 = t % tw * DW_TW;  // n*C + c
    const int c = nc % C, w = w0 + tx;
    // gy rows [g0, g0 + gr) feed gx rows [h0, h0 + TH) (columns alike)
    const int lh = h0 + ph - (kh - 1) * dh, lw = w0 + pw - (kw - 1) * dw;
    const int g0 = lh <= 0 ? 0 : (lh + sh - 1) / sh, e0 = lw <= 0 ? 0 : (lw + sw - 1) / sw;
    const int gr = min((min(h0 + TH, H) - 1 + ph) / sh + 1, Ho) - g0;
    const int gc = min((min(w0 + DW_TW, W) - 1 + pw) / sw + 1, Wo) - e0;
    real acc[DW_RMAX];
    for (int k = 0; k < DW_RMAX; ++k) acc[k] = 0;
    for (int k = 0; k < m; ++k) {
      dw_load(win, gy + (nc * m + k) * Ho * Wo, Wo, g0, gr, e0, gc, wt + (c * m + k) * kh * kw,
              kh * kw);
      __syncthreads();
      const real* ws = win + DW_HALO - kh * kw;  // the weights
      for (int i = 0; i < kh; ++i)
        for (int j = 0; j < kw; ++j) {
          const int q = w + pw - j * dw, e = (q >> sfw) - e0;  // the tap's window column
          if (w >= W || q < 0 || (q & (sw - 1)) || e >= gc) continue;
          const real wv = ws[i * kw + j];
          for (int r = 0; r < DW_RMAX; ++r) {
            const int p = h0 + ty + r * DW_TY + ph - i * dh, g = (p >> sfh) - g0;
            if (r < rows && p >= 0 && !(p & (sh - 1)) && g < gr) acc[r] += win[g * gc + e] * wv;
          }
        }
      __syncthreads();  // the next channel or tile overwrites the window
    }
    for (int r = 0; r < rows; ++r) {
      const int h = h0 + ty + r * DW_TY;
      if (h < H && w < W) gx[(nc * H + h) * W + w] = acc[r];
    }
  }
}

// The first half of gw. One block: for an output tile (as depthwise_forward's) and each tap, the
// tile's sum of gy * x: thread sums over its rows, then block_tree_sum, into
// part[(co * kh * kw + tap) * P + p], p = n * tiles per plane + tile. reduce.cu's channel_sum
// then adds each row of part in a fixed order (gw = part summed over p): a split reduction
// over N*Ho*Wo with C*m*P blocks, deterministic, no atomics.
// Launch: grid min(C*m*P, MAX_GRID), block BLOCK. Bytes per output element (a tile's kh*kw
// partials): reads the window and the tile's gy, writes kh*kw reals.
extern "C" __global__ void depthwise_backward_weight(const real* __restrict__ x,
                                                     const real* __restrict__ gy,
                                                     real* __restrict__ part, int m, int N,
                                                     int C, int H, int W, int kh, int kw, int sh,
                                                     int sw, int ph, int pw, int dh, int dw,
                                                     int Ho, int Wo, int rows) {
  __shared__ real win[DW_HALO];
  __shared__ real partial[BLOCK];
  const int tx = threadIdx.x % DW_TW, ty = threadIdx.x / DW_TW, TH = DW_TY * rows, Cm = C * m;
  const int tw = (Wo + DW_TW - 1) / DW_TW, th = (Ho + TH - 1) / TH, P = N * th * tw;
  for (int t = blockIdx.x; t < Cm * P; t += gridDim.x) {
    const int co = t / P, p = t % P, n = p / (th * tw), ho0 = p / tw % th * TH;
    const int wo0 = p % tw * DW_TW, wo = wo0 + tx;
    int r0, hr, c0, hc;
    dw_window(ho0, min(ho0 + TH, Ho), sh, ph, kh, dh, H, &r0, &hr);
    dw_window(wo0, min(wo0 + DW_TW, Wo), sw, pw, kw, dw, W, &c0, &hc);
    dw_load(win, x + (n * C + co / m) * H * W, W, r0, hr, c0, hc, gy, 0);  // no weights
    real g[DW_RMAX];  // this thread's gy, read once for all the taps
    for (int k = 0; k < DW_RMAX; ++k) {
      const int ho = ho0 + ty + k * DW_TY;
      g[k] = k < rows && ho < Ho && wo < Wo ? gy[((n * Cm + co) * Ho + ho) * Wo + wo] : (real)0;
    }
    __syncthreads();
    for (int i = 0; i < kh; ++i)
      for (int j = 0; j < kw; ++j) {
        const int c = wo * sw - pw + j * dw - c0;
        real s = 0;
        for (int k = 0; k < DW_RMAX; ++k) {  // only real outputs: 0 * inf would be NaN
          const int ho = ho0 + ty + k * DW_TY, r = ho * sh - ph + i * dh - r0;
          if (k < rows && ho < Ho && wo < Wo && c >= 0 && c < hc && r >= 0 && r < hr)
            s += g[k] * win[r * hc + c];
        }
        s = block_tree_sum(partial, s);
        if (threadIdx.x == 0) part[((co * kh + i) * kw + j) * P + p] = s;
        __syncthreads();  // partial is reduced into again (and the window overwritten)
      }
  }
}
