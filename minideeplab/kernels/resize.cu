// Bilinear resize of contiguous (N, C, H, W) arrays (ARCHITECTURE.md s. 5 and 7), forward and
// backward. The index arithmetic of align_corners lives on the host (functional/resize.py) in
// per-axis tables, so both devices and the NumPy path share one definition of which inputs an
// output reads. The first two kernels, grid-stride loops launched 1-D as grid_1d(n) blocks of
// BLOCK threads, are the readable reference versions of the banded ones the op runs (last
// section).

// One thread: outputs i, i + stride, ... (grid-stride) of y (N, C, Ho, Wo); output (oy, ox) mixes
// rows y0[oy], y1[oy] (weight wy[oy] on y1) and columns x0[ox], x1[ox] (weight wx[ox] on x1).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads, n = N C Ho Wo.
// Bytes per output element: reads 4 reals (+ table entries, cached), writes 1 real.
extern "C" __global__ void resize_bilinear_forward_reference(const real* __restrict__ x,
                                                             const int* __restrict__ y0,
                                                             const int* __restrict__ y1,
                                                             const real* __restrict__ wy,
                                                             const int* __restrict__ x0,
                                                             const int* __restrict__ x1,
                                                             const real* __restrict__ wx,
                                                             real* __restrict__ y, int H, int W,
                                                             int Ho, int Wo, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int ox = i % Wo, oy = (i / Wo) % Ho, nc = i / (Wo * Ho);
    const real* r0 = x + (nc * H + y0[oy]) * W;
    const real* r1 = x + (nc * H + y1[oy]) * W;
    const real top = r0[x0[ox]] + (r0[x1[ox]] - r0[x0[ox]]) * wx[ox];
    const real bottom = r1[x0[ox]] + (r1[x1[ox]] - r1[x0[ox]]) * wx[ox];
    y[i] = top + (bottom - top) * wy[oy];
  }
}

// Backward as a gather, deterministic without atomics: one thread per input element (n, c, iy, ix)
// adds up every output that read it, gx = sum_a sum_b hw[a] * ww[b] * gy[n, c, hidx[a], widx[b]]
// over a in hoff[iy] .. hoff[iy + 1] - 1 (the output rows that read row iy, with their weights)
// and b likewise for columns. Grid-stride over the input elements.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads, n = N C H W.
// Bytes per output (= input-gradient) element: reads (Ho/H) (Wo/W) x 4 reals on average (each
// gy element is read by at most 4 threads), writes 1 real.
extern "C" __global__ void resize_bilinear_backward_reference(const real* __restrict__ gy,
                                                              const int* __restrict__ hoff,
                                                              const int* __restrict__ hidx,
                                                              const real* __restrict__ hw,
                                                              const int* __restrict__ woff,
                                                              const int* __restrict__ widx,
                                                              const real* __restrict__ ww,
                                                              real* __restrict__ gx, int H, int W,
                                                              int Ho, int Wo, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int ix = i % W, iy = (i / W) % H, nc = i / (W * H);
    real s = 0;
    for (int a = hoff[iy]; a < hoff[iy + 1]; ++a) {
      const real* row = gy + (nc * Ho + hidx[a]) * Wo;
      real r = 0;
      for (int b = woff[ix]; b < woff[ix + 1]; ++b) r += ww[b] * row[widx[b]];
      s += hw[a] * r;
    }
    gx[i] = s;
  }
}

// -- banded kernels (the op's) ---------------------------------------------------------------
// A block computes a band of `band` rows of one (n, c) plane of its output. The source rows the
// band reads are contiguous in memory: the block copies them into shared memory once, thread t
// taking elements t, t + BLOCK, ... (consecutive threads, consecutive addresses: coalesced), and
// then computes the band's elements t, t + BLOCK, ... from there, as the reference kernels do
// (the same arithmetic, so the same bits), advancing its row and column by additions rather than
// dividing. The host picks the band so that its source rows fit RS_CAP reals, or runs the
// reference kernels where not even one row's do (functional/resize.py).
// Launch: grid min(N*C*bands, MAX_GRID), block BLOCK (a grid-stride loop over the bands).
// RS_CAP (reals of shared source rows) comes from the host with BLOCK (kernels.MACROS).

// Copies len consecutive reals of src into rows.
__device__ __forceinline__ void rs_load(real* rows, const real* src, int len) {
  for (int j = threadIdx.x; j < len; j += blockDim.x) rows[j] = src[j];
}

// One block: output rows [oy0, oy0 + band) of y, whose input rows y0[oy0] .. y1[last] it copies.
// Launch: grid min(NC*bands, MAX_GRID), block BLOCK. Bytes per output element: reads
// (H W) / (Ho Wo) reals of x (once per band) and the table entries (cached), writes 1 real.
extern "C" __global__ void resize_bilinear_forward(const real* __restrict__ x,
                                                   const int* __restrict__ y0,
                                                   const int* __restrict__ y1,
                                                   const real* __restrict__ wy,
                                                   const int* __restrict__ x0,
                                                   const int* __restrict__ x1,
                                                   const real* __restrict__ wx,
                                                   real* __restrict__ y, int H, int W, int Ho,
                                                   int Wo, int NC, int band) {
  __shared__ real rows[RS_CAP];
  const int bands = (Ho + band - 1) / band, dr = blockDim.x / Wo, dc = blockDim.x % Wo;
  for (int b = blockIdx.x; b < NC * bands; b += gridDim.x) {
    const int nc = b / bands, oy0 = b % bands * band, oy1 = min(oy0 + band, Ho), h0 = y0[oy0];
    rs_load(rows, x + (nc * H + h0) * W, (y1[oy1 - 1] + 1 - h0) * W);
    __syncthreads();
    int r = threadIdx.x / Wo, ox = threadIdx.x % Wo;
    for (int j = threadIdx.x; j < (oy1 - oy0) * Wo; j += blockDim.x) {
      const int oy = oy0 + r;
      const real* r0 = rows + (y0[oy] - h0) * W;
      const real* r1 = rows + (y1[oy] - h0) * W;
      const real top = r0[x0[ox]] + (r0[x1[ox]] - r0[x0[ox]]) * wx[ox];
      const real bottom = r1[x0[ox]] + (r1[x1[ox]] - r1[x0[ox]]) * wx[ox];
      y[(nc * Ho + oy) * Wo + ox] = top + (bottom - top) * wy[oy];
      r += dr;
      ox += dc;
      if (ox >= Wo) ox -= Wo, ++r;
    }
    __syncthreads();  // the next band overwrites rows
  }
}

// One block: rows [iy0, iy0 + band) of gx (band k), gathering as resize_bilinear_backward_reference
// from the gy rows span[k] .. span[bands + k] - 1 (the host's table of the rows each band's
// readers cover), which it copies.
// Launch: grid min(NC*bands, MAX_GRID), block BLOCK. Bytes per output (= input-gradient)
// element: reads (Ho Wo) / (H W) reals of gy (about once per band) and the table entries
// (cached), writes 1 real.
extern "C" __global__ void resize_bilinear_backward(const real* __restrict__ gy,
                                                    const int* __restrict__ hoff,
                                                    const int* __restrict__ hidx,
                                                    const real* __restrict__ hw,
                                                    const int* __restrict__ woff,
                                                    const int* __restrict__ widx,
                                                    const real* __restrict__ ww,
                                                    const int* __restrict__ span,
                                                    real* __restrict__ gx, int H, int W, int Ho,
                                                    int Wo, int NC, int band) {
  __shared__ real rows[RS_CAP];
  const int bands = (H + band - 1) / band, dr = blockDim.x / W, dc = blockDim.x % W;
  for (int b = blockIdx.x; b < NC * bands; b += gridDim.x) {
    const int nc = b / bands, k = b % bands, iy0 = k * band, g0 = span[k];
    rs_load(rows, gy + (nc * Ho + g0) * Wo, (span[bands + k] - g0) * Wo);
    __syncthreads();
    int r = threadIdx.x / W, ix = threadIdx.x % W;
    for (int j = threadIdx.x; j < (min(iy0 + band, H) - iy0) * W; j += blockDim.x) {
      const int iy = iy0 + r;
      real s = 0;
      for (int a = hoff[iy]; a < hoff[iy + 1]; ++a) {
        const real* row = rows + (hidx[a] - g0) * Wo;
        real q = 0;
        for (int c = woff[ix]; c < woff[ix + 1]; ++c) q += ww[c] * row[widx[c]];
        s += hw[a] * q;
      }
      gx[(nc * H + iy) * W + ix] = s;
      r += dr;
      ix += dc;
      if (ix >= W) ix -= W, ++r;
    }
    __syncthreads();  // the next band overwrites rows
  }
}
