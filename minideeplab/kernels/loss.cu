// Per-pixel softmax cross-entropy of (N, C, HW) logits (DESIGN.md s. 3 and 7).

// One thread: pixels p, p + stride, ... (grid-stride) of the N HW pixels; for pixel p = (n, s) it
// reads the C logits x[n, :, s] (stride HW: neighbouring threads read neighbouring addresses),
// writes the softmax prob[n, :, s] (saved for the backward) and loss[p] = log(sum exp(x - max))
// - (x[label] - max), max-subtracted so no exp overflows; loss[p] = 0 where label < 0 (ignored).
// Launch: 1-D, grid_1d(N HW) blocks of 256.
// Bytes per output (pixel): reads 3 C reals and 1 int, writes C + 1 reals.
extern "C" __global__ void softmax_xent_forward(const real* x, const int* labels, real* prob,
                                                real* loss, long long C, long long HW,
                                                long long n_pixels) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < n_pixels; p += stride) {
    const long long base = (p / HW) * C * HW + p % HW;
    real m = x[base];
    for (long long c = 1; c < C; ++c) m = fmax(m, x[base + c * HW]);
    real s = 0;
    for (long long c = 0; c < C; ++c) {
      const real e = exp(x[base + c * HW] - m);
      prob[base + c * HW] = e;
      s += e;
    }
    for (long long c = 0; c < C; ++c) prob[base + c * HW] /= s;
    const int label = labels[p];
    loss[p] = label < 0 ? (real)0 : log(s) - (x[base + label * HW] - m);
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of gx (N, C, HW):
// gx = (prob - [c == label]) * scale[0] for counted pixels, 0 for ignored ones (label < 0);
// scale = upstream gradient / number of counted pixels, kept on the device (no host sync).
// Launch: 1-D, grid_1d(N C HW) blocks of 256. Bytes per output element: reads 1 real + 1 int,
// writes 1 real.
extern "C" __global__ void softmax_xent_backward(const real* prob, const int* labels,
                                                 const real* scale, real* gx, long long C,
                                                 long long HW, long long n) {
  const long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const long long s = i % HW, c = (i / HW) % C, label = labels[(i / (C * HW)) * HW + s];
    gx[i] = label < 0 ? (real)0 : (prob[i] - (real)(c == label)) * scale[0];
  }
}
