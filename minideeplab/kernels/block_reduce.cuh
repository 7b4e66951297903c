// The block-wide sum shared by the kernels that reduce one block's values (reduce.cu, norm.cu,
// conv.cu; ARCHITECTURE.md s. 5). Compiled with the file that includes it: real and BLOCK are
// its macros.
#pragma once

// The sum of v over the block's threads: thread t stores its v in partial[t], then a tree adds
// partial[t + k] into partial[t] for k = blockDim.x / 2, ..., 2, 1, with a barrier after each
// level. The order of every addition is fixed, so the sum is deterministic (no atomics).
// Every thread of the block must call it (it has barriers); blockDim.x is a power of two, at most
// the size of partial (a __shared__ real[BLOCK]). Returns the sum to every thread. partial is
// read until the caller's next barrier: one __syncthreads() before reducing into it again.
__device__ __forceinline__ real block_tree_sum(real* partial, real v) {
  partial[threadIdx.x] = v;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
    __syncthreads();
  }
  return partial[0];
}
