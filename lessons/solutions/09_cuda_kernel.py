"""Reference solution of lesson 9's exercise (graded by checks.check_scale_shift_kernel)."""

SCALE_SHIFT = r"""
// One thread: elements i, i + stride, ... (grid-stride) of y = x * s[c] + b[c] on contiguous
// (N, C, L) arrays. Launch: 1-D, grid_1d(n) blocks of BLOCK threads.
extern "C" __global__ void scale_shift_forward(const real* x, const real* s, const real* b,
                                               real* y, int C, int L, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int c = (i / L) % C;  // element i = (n * C + c) * L + l
    y[i] = x[i] * s[c] + b[c];
  }
}
"""
