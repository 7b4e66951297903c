// ReLU of one element, forward and backward, shared by activation.cu and norm.cu's fused batch
// norm + ReLU (ARCHITECTURE.md s. 5). Compiled with the file that includes it: real is its macro.
// NaN as the NumPy path has it, so every device gives the same answer: the forward keeps a NaN
// (np.maximum(z, 0)), and the backward is gy * (z > 0), where 0 * gy is NaN when gy is NaN or
// infinite. On finite values both are the plain selects they were.
#pragma once

// max(z, 0), NaN kept (CUDA's fmax(z, 0) would give 0 for a NaN z).
__device__ __forceinline__ real relu_value(real z) {
  return z > (real)0 || isnan(z) ? z : (real)0;
}

// The gradient gy passes where z > 0; elsewhere gy - gy: +0 for a finite gy, NaN for a NaN or an
// infinite one (0 * gy, as gy * (z > 0) gives it on the NumPy path).
__device__ __forceinline__ real relu_grad(real z, real gy) {
  return z > (real)0 ? gy : gy - gy;
}
