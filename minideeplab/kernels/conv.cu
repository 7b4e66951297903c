// Convolution kernels (paper Sec. 3.1, DESIGN.md s. 3) behind conv2d's kernel path
// (functional/conv.py): im2col / col2im around an xp.matmul GEMM for dense and grouped convs, and
// direct depthwise kernels. Every kernel takes the same geometry: input x (N, C, H, W) in NCHW,
// kernel kh x kw, stride (sh, sw), zero padding (ph, pw), dilation (dh, dw), output Ho x Wo.
// Output row ho under tap row i reads input row ho*sh - ph + i*dh (columns alike); a read outside
// [0, H) x [0, W) is padding and contributes zero. Flat indices are 64-bit.
// Launch: 1-D grid-stride loops, grid_1d(n) blocks of 256 threads, except
// depthwise_backward_weight (see there). Gathers only: no atomics, every result is deterministic.

// One thread: column element idx = ((((n*C + c)*kh + i)*kw + j)*Ho + ho)*Wo + wo, i.e. the input
// pixel under tap (i, j) of channel c for output pixel (ho, wo), or 0 on padding.
// Bytes per output element: reads at most 1 real, writes 1.
extern "C" __global__ void im2col(const real* x, real* cols, long long N, long long C, long long H,
                                  long long W, long long kh, long long kw, long long sh,
                                  long long sw, long long ph, long long pw, long long dh,
                                  long long dw, long long Ho, long long Wo) {
  const long long total = N * C * kh * kw * Ho * Wo, step = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const long long wo = idx % Wo, ho = idx / Wo % Ho, j = idx / (Wo * Ho) % kw;
    const long long i = idx / (Wo * Ho * kw) % kh, nc = idx / (Wo * Ho * kw * kh);
    const long long h = ho * sh - ph + i * dh, w = wo * sw - pw + j * dw;
    cols[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(nc * H + h) * W + w] : (real)0;
  }
}

// The output row (or column) that input position p feeds under tap t, inverting
// p = o*s - pad + t*d, or -1 when it feeds none: the gathers of col2im and
// depthwise_backward_input both walk the taps this way.
__device__ __forceinline__ long long tap_output(long long p, long long t, long long pad, long long d,
                                                long long s, long long out) {
  const long long q = p + pad - t * d;
  return (q < 0 || q % s != 0 || q / s >= out) ? -1 : q / s;
}

// One thread: gx[n, c, h, w] = the sum of the column entries im2col copied from pixel (h, w), i.e.
// over the taps (i, j) with (h + ph - i*dh) a multiple of sh giving an output row in [0, Ho)
// (columns alike). Gathering per input pixel instead of scattering per column needs no atomics.
// Bytes per output element: reads at most kh*kw reals, writes 1.
extern "C" __global__ void col2im(const real* cols, real* gx, long long N, long long C, long long H,
                                  long long W, long long kh, long long kw, long long sh,
                                  long long sw, long long ph, long long pw, long long dh,
                                  long long dw, long long Ho, long long Wo) {
  const long long total = N * C * H * W, step = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const long long w = idx % W, h = idx / W % H, nc = idx / (W * H);
    real s = 0;
    for (long long i = 0; i < kh; ++i) {
      const long long ho = tap_output(h, i, ph, dh, sh, Ho);
      if (ho < 0) continue;
      for (long long j = 0; j < kw; ++j) {
        const long long wo = tap_output(w, j, pw, dw, sw, Wo);
        if (wo >= 0) s += cols[(((nc * kh + i) * kw + j) * Ho + ho) * Wo + wo];
      }
    }
    gx[idx] = s;
  }
}

// Depthwise conv with channel multiplier m: output channel co = c*m + k reads input channel c only,
// weights w (C*m, 1, kh, kw). One thread: y[n, co, ho, wo] = sum over taps of x * w.
// Bytes per output element: reads at most kh*kw x values and kh*kw weights (cached), writes 1.
extern "C" __global__ void depthwise_forward(const real* x, const real* wt, real* y, long long m,
                                             long long N, long long C, long long H, long long W,
                                             long long kh, long long kw, long long sh,
                                             long long sw, long long ph, long long pw,
                                             long long dh, long long dw, long long Ho,
                                             long long Wo) {
  const long long total = N * C * m * Ho * Wo, step = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const long long wo = idx % Wo, ho = idx / Wo % Ho, nco = idx / (Wo * Ho);
    const long long co = nco % (C * m), n = nco / (C * m);
    const real* xc = x + (n * C + co / m) * H * W;
    const real* wc = wt + co * kh * kw;
    real s = 0;
    for (long long i = 0; i < kh; ++i) {
      const long long h = ho * sh - ph + i * dh;
      if (h < 0 || h >= H) continue;
      for (long long j = 0; j < kw; ++j) {
        const long long w = wo * sw - pw + j * dw;
        if (w >= 0 && w < W) s += xc[h * W + w] * wc[i * kw + j];
      }
    }
    y[idx] = s;
  }
}

// One thread: gx[n, c, h, w] = sum over the m output channels c*m + k and over the taps (i, j)
// whose output pixel ((h + ph - i*dh) / sh, (w + pw - j*dw) / sw) exists, of gy * w (a gather:
// no atomics). Bytes per output element: reads at most m*kh*kw gy values and as many weights,
// writes 1.
extern "C" __global__ void depthwise_backward_input(const real* gy, const real* wt, real* gx,
                                                    long long m, long long N, long long C,
                                                    long long H, long long W, long long kh,
                                                    long long kw, long long sh, long long sw,
                                                    long long ph, long long pw, long long dh,
                                                    long long dw, long long Ho, long long Wo) {
  const long long total = N * C * H * W, step = (long long)gridDim.x * blockDim.x;
  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const long long w = idx % W, h = idx / W % H, nc = idx / (W * H);
    const long long c = nc % C, n = nc / C;
    real s = 0;
    for (long long k = 0; k < m; ++k) {
      const real* gyc = gy + (n * C * m + c * m + k) * Ho * Wo;
      const real* wc = wt + (c * m + k) * kh * kw;
      for (long long i = 0; i < kh; ++i) {
        const long long ho = tap_output(h, i, ph, dh, sh, Ho);
        if (ho < 0) continue;
        for (long long j = 0; j < kw; ++j) {
          const long long wo = tap_output(w, j, pw, dw, sw, Wo);
          if (wo >= 0) s += gyc[ho * Wo + wo] * wc[i * kw + j];
        }
      }
    }
    gx[idx] = s;
  }
}

#define DW_WEIGHT_BLOCK 256

// One block: gw[co, 0, i, j] = sum over n, ho, wo of gy[n, co, ho, wo] * x[n, co / m, h, w] for
// one (output channel, tap) pair b = co*kh*kw + i*kw + j (a grid-stride loop over the C*m*kh*kw
// pairs). Thread t sums the positions t, t + 256, ... of the N*Ho*Wo outputs (neighbouring
// threads read neighbouring gy), then the block adds the 256 partial sums in a shared-memory tree.
// No atomics; the order of every addition is fixed, so the result is deterministic.
// Launch: grid min(C*m*kh*kw, 4096), block 256 (= DW_WEIGHT_BLOCK, a power of two).
// Bytes per output element: reads N*Ho*Wo gy and as many x values, writes 1 real.
extern "C" __global__ void depthwise_backward_weight(const real* x, const real* gy, real* gw,
                                                     long long m, long long N, long long C,
                                                     long long H, long long W, long long kh,
                                                     long long kw, long long sh, long long sw,
                                                     long long ph, long long pw, long long dh,
                                                     long long dw, long long Ho, long long Wo) {
  __shared__ real partial[DW_WEIGHT_BLOCK];
  const long long pairs = C * m * kh * kw, HoWo = Ho * Wo;
  for (long long b = blockIdx.x; b < pairs; b += gridDim.x) {
    const long long co = b / (kh * kw), i = b / kw % kh, j = b % kw;
    const real* xc = x + co / m * H * W;
    real s = 0;
    for (long long q = threadIdx.x; q < N * HoWo; q += blockDim.x) {
      const long long n = q / HoWo, p = q % HoWo;
      const long long h = p / Wo * sh - ph + i * dh, w = p % Wo * sw - pw + j * dw;
      if (h >= 0 && h < H && w >= 0 && w < W)
        s += gy[(n * C * m + co) * HoWo + p] * xc[(n * C * H + h) * W + w];
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
      if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
      __syncthreads();
    }
    if (threadIdx.x == 0) gw[b] = partial[0];
    __syncthreads();  // partial is rewritten by the next pair
  }
}
