// Kernels that exercise the emulator itself (tests/test_emu.py), one behaviour each.

// Sum of each block's 256 elements by a shared-memory tree: wrong without the barriers.
extern "C" __global__ void block_sum(const real* x, real* out, long long n) {
  __shared__ real s[256];
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : (real)0;
  __syncthreads();
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// The same tree without the barriers: threads read partial sums that are not written yet.
extern "C" __global__ void block_sum_racy(const real* x, real* out, long long n) {
  __shared__ real s[256];
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : (real)0;
  for (unsigned k = blockDim.x / 2; k > 0; k >>= 1)
    if (threadIdx.x < k) s[threadIdx.x] += s[threadIdx.x + k];
  if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// Each thread reads what its right neighbour (in its own block) stored in shared memory.
extern "C" __global__ void neighbour(real* out) {
  __shared__ real s[1024];
  const unsigned t = threadIdx.x, b = blockIdx.x;
  s[t] = (real)(1000 * b + t);
  __syncthreads();
  out[b * blockDim.x + t] = s[(t + 1) % blockDim.x];
}

// Every thread writes its 12 coordinates: threadIdx, blockIdx, blockDim, gridDim (x, y, z each).
extern "C" __global__ void coordinates(int* out) {
  const long long block = ((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const long long thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  int* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  const uint3 v[4] = {threadIdx, blockIdx, blockDim, gridDim};
  for (int k = 0; k < 4; ++k) { o[3 * k] = v[k].x; o[3 * k + 1] = v[k].y; o[3 * k + 2] = v[k].z; }
}

// Histogram by atomics: real counts, and an int count of all elements; a barrier in between.
extern "C" __global__ void histogram(const int* labels, real* counts, int* total, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) atomicAdd(&counts[labels[i]], (real)1);
  __syncthreads();
  if (i < n) atomicAdd(total, 1);
}

// A few threads leave before the barrier the others wait at.
extern "C" __global__ void early_exit(real* out) {
  if (threadIdx.x < 5) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Odd and even threads wait at different barriers.
extern "C" __global__ void divergent_barrier(real* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// y[i] = x[i + shift] for i < n: shift 1 reads one past the end of x.
extern "C" __global__ void shifted_read(const real* x, real* y, long long n, long long shift) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i + shift];
}

// y[i + shift] = x[i] for i < n: shift 1 writes one past the end, -1 one before the start.
extern "C" __global__ void shifted_write(const real* x, real* y, long long n, long long shift) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i + shift] = x[i];
}

// The math built-ins, 9 results per element.
extern "C" __global__ void math(const real* x, real* out, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const real v = x[i];
  real* o = out + 9 * i;
  o[0] = exp(v); o[1] = log(fabs(v)); o[2] = sqrt(fabs(v)); o[3] = rsqrt(fabs(v)); o[4] = floor(v);
  o[5] = min(v, (real)0.5); o[6] = max(v, (real)0.5); o[7] = fmin(v, (real)-0.5); o[8] = fmax(v, (real)-0.5);
}

// The float spellings of the math built-ins, 4 results per element.
extern "C" __global__ void math_float(const float* x, float* out, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  out[4 * i] = expf(v) + logf(fabsf(v)); out[4 * i + 1] = sqrtf(fabsf(v)) * rsqrtf(fabsf(v));
  out[4 * i + 2] = floorf(v); out[4 * i + 3] = fminf(v, 0.5f) + fmaxf(v, 0.5f);
}
