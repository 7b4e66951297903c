// Per-channel sum over N, H, W of a contiguous NCHW array: out[c] = sum_{n,h,w} x[n, c, h, w]
// (BatchNorm's statistics and its backward, ARCHITECTURE.md s. 5).
// One block per channel c. Thread t adds up the elements j = t, t + BLOCK, ... of the channel's N*HW
// values (j -> x[(j / HW) * C * HW + c * HW + j % HW], so neighbouring threads read neighbouring
// addresses), then the block adds its BLOCK partial sums in a shared-memory tree. The order of every
// addition is fixed, so the result is deterministic (no atomics).
// Indices are 32-bit int: the j / HW of every element would cost many times more in 64 bits,
// which a GPU emulates in software; the loader refuses arrays too large for int.
// Launch: grid C, block BLOCK.
// Bytes per output element: reads N*H*W reals, writes 1 real.

#include "block_reduce.cuh"

extern "C" __global__ void channel_sum(const real* __restrict__ x, real* __restrict__ out, int N,
                                       int C, int HW) {
  __shared__ real partial[BLOCK];
  const int c = blockIdx.x, CHW = C * HW;
  const real* xc = x + c * HW;
  real s = 0;
  for (int j = threadIdx.x; j < N * HW; j += blockDim.x) {
    const int n = j / HW;
    s += xc[n * CHW + (j - n * HW)];
  }
  s = block_tree_sum(partial, s);
  if (threadIdx.x == 0) out[c] = s;
}
