// Convolution kernels (paper Sec. 3.1, ARCHITECTURE.md s. 5) behind conv2d's kernel path
// (functional/conv.py): im2col / col2im around an xp.matmul GEMM for dense and grouped convs, and
// direct depthwise kernels. Every kernel takes the same geometry: input x (N, C, H, W) in NCHW,
// kernel kh x kw, stride (sh, sw), zero padding (ph, pw), dilation (dh, dw), output Ho x Wo.
// Output row ho under tap row i reads input row ho*sh - ph + i*dh (columns alike); a read outside
// [0, H) x [0, W) is padding and contributes zero.
// Launch: 1-D grid-stride loops over the output's n elements, grid_1d(n) blocks of BLOCK threads,
// except depthwise_backward_weight (one block per weight). Gathers only: no atomics, every result
// is deterministic.

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
extern "C" __global__ void depthwise_forward(const real* __restrict__ x,
                                             const real* __restrict__ wt, real* __restrict__ y,
                                             int m, int N, int C, int H, int W, int kh, int kw,
                                             int sh, int sw, int ph, int pw, int dh, int dw,
                                             int Ho, int Wo) {
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
extern "C" __global__ void depthwise_backward_input(const real* __restrict__ gy,
                                                    const real* __restrict__ wt,
                                                    real* __restrict__ gx, int m, int N, int C,
                                                    int H, int W, int kh, int kw, int sh, int sw,
                                                    int ph, int pw, int dh, int dw, int Ho,
                                                    int Wo) {
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
extern "C" __global__ void depthwise_backward_weight(const real* __restrict__ x,
                                                     const real* __restrict__ gy,
                                                     real* __restrict__ gw, int m, int N, int C,
                                                     int H, int W, int kh, int kw, int sh, int sw,
                                                     int ph, int pw, int dh, int dw, int Ho,
                                                     int Wo) {
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
