// ReLU (ARCHITECTURE.md s. 5), forward y = max(x, 0) and backward gx = gy where y > 0, else 0.
// One thread: elements i, i + stride, i + 2 stride, ... of a grid-stride loop
//   (i = its global index, stride = gridDim.x * blockDim.x), so any grid covers any n.
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads (kernels/__init__.py).
// Bytes per output element: forward reads 1 real, writes 1; backward reads 2 (y, gy), writes 1.
// Indices are 32-bit int, as in every kernel file (a GPU emulates 64-bit integer division and
// modulo in software, see conv.cu); the loader refuses arrays too large for int.
// No __restrict__: an op may run in place (y == x, gx == gy).

extern "C" __global__ void relu_forward(const real* x, real* y, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = x[i] > (real)0 ? x[i] : (real)0;
}

extern "C" __global__ void relu_backward(const real* y, const real* gy, real* gx, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    gx[i] = y[i] > (real)0 ? gy[i] : (real)0;
}
