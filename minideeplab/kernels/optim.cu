// SGD with momentum and weight decay (optim.py, ARCHITECTURE.md s. 8): the whole update of one
// parameter in one launch, where the array-at-a-time form costs up to six launches per parameter.

// One thread: elements i, i + stride, ... (grid-stride, stride = gridDim.x * blockDim.x) of
//   d = g + weight_decay * p;
//   momentum != 0: buf = momentum * buf + d, then d = buf, or d + momentum * buf (nesterov != 0);
//   p -= lr * d.
// The operations and their order are those of optim.py's NumPy twin (weight_decay = 0 where the
// parameter is not decayed: adding 0 * p to a finite p changes nothing); a GPU may fuse a
// multiply and an add into one FMA, rounding once where NumPy rounds twice. With momentum = 0 buf
// is neither read nor written (the caller passes any writable array of n reals: it has no buffer
// then).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per element: reads 2 reals (p, g) and
// writes 1 without momentum; reads 3 and writes 2 with it.
extern "C" __global__ void sgd_update(real* __restrict__ p, const real* __restrict__ g,
                                      real* __restrict__ buf, real lr, real momentum,
                                      real weight_decay, int nesterov, int n) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    real d = g[i] + weight_decay * p[i];
    if (momentum != (real)0) {
      const real b = momentum * buf[i] + d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] -= lr * d;
  }
}
