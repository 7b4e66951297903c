// ReLU (ARCHITECTURE.md s. 5): forward y = max(x, 0), backward gx = gy where y > 0, else 0, with
// NaN as on the NumPy path (relu.cuh). Both are grid-stride loops over n elements, launched 1-D as
// grid_1d(n) blocks of BLOCK threads. No __restrict__: an op may run in place (y == x, gx == gy).

#include "relu.cuh"

// One thread: elements i, i + stride, i + 2 stride, ... of y (i = its global index, stride =
// gridDim.x * blockDim.x), so any grid covers any n.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 1 real,
// writes 1.
extern "C" __global__ void relu_forward(const real* x, real* y, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = relu_value(x[i]);
}

// One thread: elements i, i + stride, ... (grid-stride) of gx.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per output element: reads 2 reals (y, gy),
// writes 1.
extern "C" __global__ void relu_backward(const real* y, const real* gy, real* gx, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    gx[i] = relu_grad(y[i], gy[i]);
}
