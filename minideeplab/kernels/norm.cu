// Batch normalisation (Ioffe & Szegedy 2015; ARCHITECTURE.md s. 5 and 9) on contiguous (N, C, L)
// arrays, L = H * W, M = N * L values per channel. batch_norm (functional/norm.py) runs the
// kernels of the last section: the statistics in one pass over x with each channel split over
// several blocks (bn_split_sums, bn_split_statistics), the backward's sums alike
// (bn_backward_sums, bn_split_coefficients), then one elementwise pass each way, the ReLU fused
// in for batch_norm(..., relu=True) (BatchNormReLU). bn_statistics serves both in eval.
// The first section's kernels are the readable reference versions of the split ones, one block
// per channel: reduce.cu's channel_sum for the sums, bn_moments for the variance and the
// backward's sums, bn_statistics and bn_backward_coefficients for the per-channel arithmetic.
// Launch: one block of BLOCK threads per channel for bn_moments, (splits, channels) blocks for
// the split sums, 1-D grid-stride loops (grid_1d(n) blocks of BLOCK threads) for the others.

#include "block_reduce.cuh"
#include "relu.cuh"

// One block per channel c: s1 = sum(w), s2 = sum(w * (x - m)) over the channel's N * L elements,
// m = centre[c] / count, w = g - m (centre_g != 0) or g. Statistics: centre = the channel sums,
// count = M, g = x, centre_g = 1 -> m = the first-pass mean, s1 = the sum of the deviations, s2
// = the sum of their squares (two-pass variance, no cancellation). Backward: centre = the mean,
// count = 1, g = gy, centre_g = 0 -> s1 = dbeta, s2 = sum(gy * (x - mean)). Thread t takes
// elements j = t, t + BLOCK, ... (neighbouring threads read neighbouring addresses); block_tree_sum
// adds the block's partial sums of each in a fixed order, so the result is deterministic.
// out = (s1, s2): (2, C).
// Launch: grid C, block BLOCK. Bytes per output element: reads 2 N L reals, writes 2.
extern "C" __global__ void bn_moments(const real* x, const real* centre, real count,
                                      const real* g, int centre_g, real* out, int N, int C,
                                      int L) {
  __shared__ real p1[BLOCK];
  __shared__ real p2[BLOCK];
  const int c = blockIdx.x;
  const real m = centre[c] / count, gs = centre_g ? m : (real)0;
  real s1 = 0, s2 = 0;
  for (int j = threadIdx.x; j < N * L; j += blockDim.x) {
    const int n = j / L, i = (n * C + c) * L + (j - n * L);
    const real w = g[i] - gs;
    s1 += w;
    s2 += w * (x[i] - m);
  }
  s1 = block_tree_sum(p1, s1);
  s2 = block_tree_sum(p2, s2);
  if (threadIdx.x == 0) {
    out[c] = s1;
    out[C + c] = s2;
  }
}

// Channel c's batch statistics from sums about a centre k: s1 = sum(x - k), s2 = the sum of
// squared deviations about k + s1 / M, over M values (both training statistics kernels). mean =
// k + s1 / M, the biased var = s2 / M - (s1 / M)^2 clamped at 0 (NaN kept); the running
// statistics move towards mean and the unbiased var, r = (1 - momentum) r + momentum stat.
__device__ void bn_batch_statistics(int c, int M, real centre, real s1, real s2,
                                    real* running_mean, real* running_var, real momentum,
                                    real* mean, real* var) {
  const real count = M, d = s1 / count, v = s2 / count - d * d;
  *mean = centre + d;
  *var = v < (real)0 ? (real)0 : v;
  running_mean[c] = running_mean[c] * ((real)1 - momentum) + momentum * *mean;
  running_var[c] = running_var[c] * ((real)1 - momentum) +
                   momentum * (*var * (count / (real)(M - 1)));
}

// stats = (mean, invstd, scale), (3, C): invstd = 1 / sqrt(var + eps), scale = gamma * invstd.
__device__ void bn_write_stats(int c, int C, real mean, real var, const real* gamma, real eps,
                               real* stats) {
  const real invstd = (real)1 / sqrt(var + eps);
  stats[c] = mean;
  stats[C + c] = invstd;
  stats[2 * C + c] = gamma[c] * invstd;
}

// One thread: channels c, c + stride, ... (grid-stride) of the forward's per-channel numbers,
// stats = (mean, invstd, scale): (3, C), invstd = 1 / sqrt(var + eps), scale = gamma * invstd.
// Training: mean0 = sum / M and moments = bn_moments' (s1, s2) about it give the corrected
// two-pass statistics (Chan, Golub & LeVeque 1983), mean = mean0 + s1 / M and the biased
// var = s2 / M - (s1 / M)^2 (clamped at 0, NaN kept); then running_mean and running_var move in
// place towards mean and the unbiased var * M / (M - 1): r = (1 - momentum) r + momentum stat.
// Eval (training = 0): mean and var are the running statistics, left as they are; sum and moments
// are not read (any arrays may stand in).
// Launch: 1-D, grid_1d(C) blocks of BLOCK threads. Bytes per channel: reads 6 reals and writes 5
// (training), reads 3 and writes 3 (eval).
extern "C" __global__ void bn_statistics(const real* sum, const real* moments, const real* gamma,
                                         real* running_mean, real* running_var, real* stats,
                                         int C, int M, real momentum, real eps, int training) {
  const int stride = gridDim.x * blockDim.x;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
    real mean = running_mean[c], var = running_var[c];
    if (training)
      bn_batch_statistics(c, M, sum[c] / (real)M, moments[c], moments[C + c], running_mean,
                          running_var, momentum, &mean, &var);
    bn_write_stats(c, C, mean, var, gamma, eps, stats);
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of y = (x - mean[c]) * scale[c] + beta[c],
// scale = gamma / sqrt(var + eps); (x - mean) first, so a large mean does not round y away.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 1 real,
// writes 1.
extern "C" __global__ void bn_forward(const real* x, const real* mean, const real* scale,
                                      const real* beta, real* y, int C, int L, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    y[i] = (x[i] - mean[c]) * scale[c] + beta[c];
  }
}

// One thread: channels c, c + stride, ... (grid-stride) of the backward's per-channel numbers,
// coef = (dgamma, a, k1, k2): (4, C), from moments = bn_moments' (dbeta, sum(gy * (x - mean))):
// dgamma = sum(gy * (x - mean)) * invstd, a = gamma * invstd; training: k1 = dbeta / M,
// k2 = invstd * dgamma / M (the batch statistics depend on x); eval (training = 0): k1 = k2 = 0
// (the statistics are constants: bn_backward_dx then gives dx = a * gy, reading neither).
// Launch: 1-D, grid_1d(C) blocks of BLOCK threads. Bytes per channel: reads 4 reals, writes 4.
extern "C" __global__ void bn_backward_coefficients(const real* moments, const real* gamma,
                                                    const real* invstd, real* coef, int C, int M,
                                                    int training) {
  const int stride = gridDim.x * blockDim.x;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
    const real dgamma = moments[C + c] * invstd[c], count = M;
    coef[c] = dgamma;
    coef[C + c] = gamma[c] * invstd[c];
    coef[2 * C + c] = training ? moments[c] / count : (real)0;
    coef[3 * C + c] = training ? invstd[c] * dgamma / count : (real)0;
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of
// dx = a[c] * (gy - k1[c] - (x - mean[c]) * k2[c]), a = gamma * invstd, k1 = dbeta / M,
// k2 = invstd^2 * sum(gy * (x - mean)) / M in training; dx = a[c] * gy in eval (training = 0),
// which does not read x: a NaN in x leaves dx as it is on the NumPy path.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 2 reals,
// writes 1.
extern "C" __global__ void bn_backward_dx(const real* x, const real* gy, const real* mean,
                                          const real* a, const real* k1, const real* k2, real* dx,
                                          int C, int L, int n, int training) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    dx[i] = training ? a[c] * (gy[i] - k1[c] - (x[i] - mean[c]) * k2[c]) : a[c] * gy[i];
  }
}

// -- the split statistics (batch_norm's kernels) and the fused ReLU --------------------------
// y = max(z, 0), z = (x - mean) * scale + beta, NaN as on the NumPy path (relu.cuh). The forward
// is bn_split_sums, bn_split_statistics and bn_forward or bn_relu_forward; the backward
// bn_backward_sums, bn_split_coefficients and bn_backward_dx or bn_relu_backward_dx, which
// recompute z from x (the ReLU's mask is z > 0): the op keeps x only.
// The sums split each channel's M = N * L elements over B blocks (grid (B, C), B from the shapes
// alone) so that a few hundred channels still fill a GPU; each block's partial sum is a
// block_tree_sum, and one thread per channel adds the B partials in the order b = 0, 1, ...:
// deterministic, without atomics.

// z for one element: the same expression in every kernel, so the backward's mask is the
// forward's bit for bit.
__device__ __forceinline__ real bn_z(real x, real mean, real scale, real beta) {
  return (x - mean) * scale + beta;
}

// One block (b, c) = (blockIdx.x, blockIdx.y): over the elements j = b * BLOCK + t, then + B *
// BLOCK, ... of channel c (j -> x[n, c, l], n = j / L, l = j % L: neighbouring threads read
// neighbouring addresses), s1 = sum(x - K) and s2 = sum((x - K)^2), K = x[0, c, 0], the channel's
// first element: sums about a value near the mean do not cancel when the mean is large against
// the spread (shifted data, Chan, Golub & LeVeque 1983), so one pass over x suffices.
// out = (s1, s2): (2, C, B).
// Launch: grid (B, C), block BLOCK. Bytes per output element: reads M / B reals, writes 1.
extern "C" __global__ void bn_split_sums(const real* x, real* out, int N, int C, int L, int B) {
  __shared__ real p1[BLOCK];
  __shared__ real p2[BLOCK];
  const int b = blockIdx.x, c = blockIdx.y, M = N * L;
  const real K = x[c * L];
  real s1 = 0, s2 = 0;
  for (int j = b * blockDim.x + threadIdx.x; j < M; j += B * blockDim.x) {
    const int n = j / L;
    const real d = x[(n * C + c) * L + (j - n * L)] - K;
    s1 += d;
    s2 += d * d;
  }
  s1 = block_tree_sum(p1, s1);
  s2 = block_tree_sum(p2, s2);
  if (threadIdx.x == 0) {
    out[c * B + b] = s1;
    out[(C + c) * B + b] = s2;
  }
}

// One thread: channels c, c + stride, ... (grid-stride): S1, S2 = the sums of bn_split_sums' B
// partials of channel c, b = 0, 1, ... in order; mean = K + S1 / M, the biased var = S2 / M -
// (S1 / M)^2 (clamped at 0, NaN kept); running_mean and running_var move in place towards mean
// and the unbiased var * M / (M - 1), r = (1 - momentum) r + momentum stat; stats = (mean, invstd,
// scale): (3, C), invstd = 1 / sqrt(var + eps), scale = gamma * invstd (as bn_statistics).
// Launch: 1-D, grid_1d(C) blocks of BLOCK threads. Bytes per channel: reads 2 B + 4 reals,
// writes 5.
extern "C" __global__ void bn_split_statistics(const real* partial, const real* x,
                                               const real* gamma, real* running_mean,
                                               real* running_var, real* stats, int C, int L,
                                               int B, int M, real momentum, real eps) {
  const int stride = gridDim.x * blockDim.x;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
    real s1 = 0, s2 = 0;
    for (int b = 0; b < B; ++b) {
      s1 += partial[c * B + b];
      s2 += partial[(C + c) * B + b];
    }
    real mean, var;
    bn_batch_statistics(c, M, x[c * L], s1, s2, running_mean, running_var, momentum, &mean, &var);
    bn_write_stats(c, C, mean, var, gamma, eps, stats);
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of y = max(z, 0), z = bn_z(x).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 1 real,
// writes 1.
extern "C" __global__ void bn_relu_forward(const real* x, const real* mean, const real* scale,
                                           const real* beta, real* y, int C, int L, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    const real z = bn_z(x[i], mean[c], scale[c], beta[c]);
    y[i] = relu_value(z);
  }
}

// One block (b, c), elements as bn_split_sums': s1 = sum(gz) and s2 = sum(gz * (x - mean)),
// gz = gy, or (relu != 0) gy where z > 0, else 0 (relu_grad: the ReLU's backward, z recomputed
// from x). out = (s1, s2): (2, C, B).
// Launch: grid (B, C), block BLOCK. Bytes per output element: reads 2 M / B reals, writes 1.
extern "C" __global__ void bn_backward_sums(const real* x, const real* gy, const real* mean,
                                            const real* scale, const real* beta, real* out, int N,
                                            int C, int L, int B, int relu) {
  __shared__ real p1[BLOCK];
  __shared__ real p2[BLOCK];
  const int b = blockIdx.x, c = blockIdx.y, M = N * L;
  const real m = mean[c], sc = scale[c], be = beta[c];
  real s1 = 0, s2 = 0;
  for (int j = b * blockDim.x + threadIdx.x; j < M; j += B * blockDim.x) {
    const int n = j / L, i = (n * C + c) * L + (j - n * L);
    const real gz = relu ? relu_grad(bn_z(x[i], m, sc, be), gy[i]) : gy[i];
    s1 += gz;
    s2 += gz * (x[i] - m);
  }
  s1 = block_tree_sum(p1, s1);
  s2 = block_tree_sum(p2, s2);
  if (threadIdx.x == 0) {
    out[c * B + b] = s1;
    out[(C + c) * B + b] = s2;
  }
}

// One thread: channels c, c + stride, ... (grid-stride): dbeta and dgd = sum(gz * (x - mean)),
// the sums of bn_backward_sums' B partials in order; then bn_backward_coefficients'
// numbers: coef = (dgamma, a, k1, k2, dbeta): (5, C), dgamma = dgd * invstd, a = gamma * invstd,
// k1 = dbeta / M, k2 = invstd * dgamma / M in training, k1 = k2 = 0 in eval.
// Launch: 1-D, grid_1d(C) blocks of BLOCK threads. Bytes per channel: reads 2 B + 2 reals,
// writes 5.
extern "C" __global__ void bn_split_coefficients(const real* partial, const real* gamma,
                                                 const real* invstd, real* coef, int C, int B,
                                                 int M, int training) {
  const int stride = gridDim.x * blockDim.x;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += stride) {
    real dbeta = 0, dgd = 0;
    for (int b = 0; b < B; ++b) {
      dbeta += partial[c * B + b];
      dgd += partial[(C + c) * B + b];
    }
    const real dgamma = dgd * invstd[c], count = M;
    coef[c] = dgamma;
    coef[C + c] = gamma[c] * invstd[c];
    coef[2 * C + c] = training ? dbeta / count : (real)0;
    coef[3 * C + c] = training ? invstd[c] * dgamma / count : (real)0;
    coef[4 * C + c] = dbeta;
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of dx = a[c] * (gz - k1[c] - (x - mean[c])
// * k2[c]) in training, a[c] * gz in eval, gz = gy where z > 0, else 0 (relu_grad;
// bn_backward_dx after the ReLU's backward).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 2 reals,
// writes 1.
extern "C" __global__ void bn_relu_backward_dx(const real* x, const real* gy, const real* mean,
                                               const real* scale, const real* beta,
                                               const real* a, const real* k1, const real* k2,
                                               real* dx, int C, int L, int n, int training) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;
    const real gz = relu_grad(bn_z(x[i], mean[c], scale[c], beta[c]), gy[i]);
    dx[i] = training ? a[c] * (gz - k1[c] - (x[i] - mean[c]) * k2[c]) : a[c] * gz;
  }
}
