// SGD with momentum and weight decay (optim.py, ARCHITECTURE.md s. 8): the update of every
// parameter in one launch, where one launch a parameter costs ~170 launches a step at the default
// preset (and the array-at-a-time form up to six per parameter).

// One thread: elements i, i + stride, ... (grid-stride, stride = gridDim.x * blockDim.x) of the
// n elements of the P parameters laid one after another, each element the update
//   d = g + wd * p;
//   momentum != 0: b = momentum * b + d, then d = b, or d + momentum * b (nesterov != 0);
//   p -= lr * d.
// table (5 P + 1 long longs): the addresses of the P parameters (written in place), of their P
// gradients (C-contiguous), the P + 1 offsets of each parameter's first element in the sequence
// (the last is n), each parameter's offset in buf (its momentum buffer b is a view of buf), and
// its weight-decay flag: wd = weight_decay, or 0 for a parameter without decay (adding 0 * p to a
// finite p changes nothing). Element i belongs to the parameter found by a binary search over the
// offsets. The operations and their order are those of optim.py's NumPy twin; a GPU may fuse a
// multiply and an add into one FMA, rounding once where NumPy rounds twice. With momentum = 0 buf
// is neither read nor written (any writable array of reals will do).
// Launch: 1-D, grid_1d(n) blocks of BLOCK threads. Bytes per element: reads 2 reals (p, g) and
// writes 1 without momentum; reads 3 and writes 2 with it (the table's few offsets are cached).
extern "C" __global__ void sgd_update(const long long* __restrict__ table, real* __restrict__ buf,
                                      real lr, real momentum, real weight_decay, int nesterov,
                                      int P, int n) {
  const long long* start = table + 2 * P;
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    int lo = 0, hi = P - 1;  // the last parameter j with start[j] <= i
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (start[mid] <= i) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    real* p = (real*)table[lo];
    const real* g = (const real*)table[P + lo];
    const int k = i - (int)start[lo];
    const real wd = table[4 * P + 1 + lo] ? weight_decay : (real)0;
    real d = g[k] + wd * p[k];
    if (momentum != (real)0) {
      real* b = buf + table[3 * P + 1 + lo];
      const real v = momentum * b[k] + d;
      b[k] = v;
      d = nesterov ? d + momentum * v : v;
    }
    p[k] -= lr * d;
  }
}
