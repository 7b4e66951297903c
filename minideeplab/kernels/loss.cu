// Per-pixel softmax cross-entropy of (N, C, HW) logits and its gradient (ARCHITECTURE.md s. 5
// and 8), grid-stride loops launched 1-D as grid_1d(n) blocks of BLOCK threads.

// One thread: pixels p, p + stride, ... (grid-stride) of the N HW pixels; for pixel p = (n, s) it
// reads the C logits x[n, :, s] (stride HW: neighbouring threads read neighbouring addresses),
// writes the softmax prob[n, :, s] (saved for the backward) and loss[p] = log(sum exp(x - max))
// - (x[label] - max), max-subtracted so no exp overflows; loss[p] = 0 where label == ignore; NaN
// where the label is outside [0, C) (the host did not check the labels: the loss shows it).
// Launch: 1-D, grid_1d(N HW) blocks of BLOCK threads.
// Bytes per output (pixel): reads 3 C reals and 1 int, writes C + 1 reals.
extern "C" __global__ void softmax_xent_forward(const real* __restrict__ x,
                                                const int* __restrict__ labels,
                                                real* __restrict__ prob, real* __restrict__ loss,
                                                int C, int HW, int n_pixels, int ignore) {
  const int stride = gridDim.x * blockDim.x;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < n_pixels; p += stride) {
    const int base = (p / HW) * C * HW + p % HW;
    real m = x[base];
    for (int c = 1; c < C; ++c) m = fmax(m, x[base + c * HW]);
    real s = 0;
    for (int c = 0; c < C; ++c) {
      const real e = exp(x[base + c * HW] - m);
      prob[base + c * HW] = e;
      s += e;
    }
    for (int c = 0; c < C; ++c) prob[base + c * HW] /= s;
    const int label = labels[p];
    loss[p] = label == ignore             ? (real)0
              : label < 0 || label >= C ? (real)nan("")
                                          : log(s) - (x[base + label * HW] - m);
  }
}

// One thread: elements i, i + stride, ... (grid-stride) of gx (N, C, HW):
// gx = (prob - [c == label]) * scale[0] for counted pixels, 0 for ignored ones (label == ignore),
// NaN for a label outside [0, C);
// scale = upstream gradient / number of counted pixels, kept on the device (no host sync).
// Launch: 1-D, grid_1d(N C HW) blocks of BLOCK threads. Bytes per output element: reads 1 real and
// 1 int, writes 1 real.
extern "C" __global__ void softmax_xent_backward(const real* __restrict__ prob,
                                                 const int* __restrict__ labels,
                                                 const real* __restrict__ scale,
                                                 real* __restrict__ gx, int C, int HW, int n,
                                                 int ignore) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int s = i % HW, c = (i / HW) % C, label = labels[(i / (C * HW)) * HW + s];
    gx[i] = label == ignore             ? (real)0
            : label < 0 || label >= C ? (real)nan("")
                                        : (prob[i] - (real)(c == label)) * scale[0];
  }
}
