// Per-channel sum over N, H, W of a contiguous NCHW array (BatchNorm's statistics and its
// backward, global average pooling; ARCHITECTURE.md s. 5), one block per channel.

#include "block_reduce.cuh"

// One block per channel c: out[c] = sum_{n,h,w} x[n, c, h, w]. Thread t adds up the elements
// j = t, t + BLOCK, ... of the channel's N*HW values (j -> x[(j / HW) * C * HW + c * HW + j % HW],
// so neighbouring threads read neighbouring addresses), then block_tree_sum adds the block's
// partial sums in a fixed order: no atomics, the result is deterministic.
// Launch: grid C, block BLOCK. Bytes per output element: reads N*H*W reals, writes 1 real.
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
