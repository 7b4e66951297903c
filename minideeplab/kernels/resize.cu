// Bilinear resize of contiguous (N, C, H, W) arrays (ARCHITECTURE.md s. 5 and 7), forward and
// backward, grid-stride loops launched 1-D as grid_1d(n) blocks of BLOCK threads. The index
// arithmetic of align_corners lives on the host (functional/resize.py) in per-axis tables, so both
// devices and the NumPy path share one definition of which inputs an output reads.

// One thread: outputs i, i + stride, ... (grid-stride) of y (N, C, Ho, Wo); output (oy, ox) mixes
// rows y0[oy], y1[oy] (weight wy[oy] on y1) and columns x0[ox], x1[ox] (weight wx[ox] on x1).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads, n = N C Ho Wo.
// Bytes per output element: reads 4 reals (+ table entries, cached), writes 1 real.
extern "C" __global__ void resize_bilinear_forward(const real* __restrict__ x,
                                                   const int* __restrict__ y0,
                                                   const int* __restrict__ y1,
                                                   const real* __restrict__ wy,
                                                   const int* __restrict__ x0,
                                                   const int* __restrict__ x1,
                                                   const real* __restrict__ wx,
                                                   real* __restrict__ y, int H, int W, int Ho,
                                                   int Wo, int n) {
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
extern "C" __global__ void resize_bilinear_backward(const real* __restrict__ gy,
                                                    const int* __restrict__ hoff,
                                                    const int* __restrict__ hidx,
                                                    const real* __restrict__ hw,
                                                    const int* __restrict__ woff,
                                                    const int* __restrict__ widx,
                                                    const real* __restrict__ ww,
                                                    real* __restrict__ gx, int H, int W, int Ho,
                                                    int Wo, int n) {
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
