// Batch normalisation (Ioffe & Szegedy 2015; DESIGN.md s. 3 and 8) on contiguous (N, C, L)
// arrays, L = H * W. The per-channel mean comes from reduce.cu's channel_sum; the variance and the
// backward's sums come from bn_moments, the same one-block-per-channel tree reduction, two sums.
// Indices are 32-bit int: every element's channel is a division by L, which in 64 bits a GPU
// emulates in software, many times slower; the loader refuses arrays too large for int.

#define BN_BLOCK 256  // = CHANNEL_SUM_BLOCK in functional/reduce.py: the shared arrays' size

// One block per channel c: s1 = sum(w), s2 = sum(w * (x - mean[c])) over the channel's N * L
// elements, w = g - gshift[c]. Statistics: g = x, gshift = mean -> s1 = sum of deviations, s2 = sum
// of squared deviations (two-pass variance, no cancellation). Backward: g = gy, gshift = 0 ->
// s1 = dbeta, s2 = sum(gy * (x - mean)). Thread t takes elements j = t, t + 256, ... (neighbouring
// threads read neighbouring addresses); the block adds its partial sums in a fixed-order tree, so
// the result is deterministic.
// Launch: grid C, block 256 (BN_BLOCK). Bytes per output element: reads 2 N L reals, writes 2.
extern "C" __global__ void bn_moments(const real* x, const real* mean, const real* g,
                                      const real* gshift, real* out, int N, int C, int L) {
  __shared__ real p1[BN_BLOCK];
  __shared__ real p2[BN_BLOCK];
  const int c = blockIdx.x;
  const real m = mean[c], gs = gshift[c];
  real s1 = 0, s2 = 0;
  for (int j = threadIdx.x; j < N * L; j += blockDim.x) {
    const int n = j / L, i = (n * C + c) * L + (j - n * L);
    const real w = g[i] - gs;
    s1 += w;
    s2 += w * (x[i] - m);
  }
  p1[threadIdx.x] = s1;
  p2[threadIdx.x] = s2;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
      p1[threadIdx.x] += p1[threadIdx.x + k];
      p2[threadIdx.x] += p2[threadIdx.x + k];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[c] = p1[0];
    out[C + c] = p2[0];
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of y = (x - mean[c]) * scale[c] + beta[c],
// scale = gamma / sqrt(var + eps); (x - mean) first, so a large mean does not round y away.
// Launch: 1-D, grid_1d(n) blocks of 256. Bytes per output element: reads 1 real, writes 1.
extern "C" __global__ void bn_forward(const real* x, const real* mean, const real* scale,
                                      const real* beta, real* y, int C, int L, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    y[i] = (x[i] - mean[c]) * scale[c] + beta[c];
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of
// dx = a[c] * (gy - k1[c] - (x - mean[c]) * k2[c]), a = gamma * invstd, k1 = dbeta / M,
// k2 = invstd^2 * sum(gy * (x - mean)) / M (training; k1 = k2 = 0 in eval).
// Launch: 1-D, grid_1d(n) blocks of 256. Bytes per output element: reads 2 reals, writes 1.
extern "C" __global__ void bn_backward_dx(const real* x, const real* gy, const real* mean,
                                          const real* a, const real* k1, const real* k2, real* dx,
                                          int C, int L, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    dx[i] = a[c] * (gy[i] - k1[c] - (x[i] - mean[c]) * k2[c]);
  }
}
