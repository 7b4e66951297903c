// cuda_emu.h: CUDA's built-ins on the host, so that kernels/*.cu compile with g++ (ARCHITECTURE.md s. 6).
// Blocks run one after another on the calling thread. A block's threads run as fibers that switch
// only at __syncthreads(), which gives CUDA's barrier semantics exactly; a kernel that never reaches
// a barrier runs its threads as plain calls. __shared__ is `static`: one copy, and since blocks run
// one at a time, one copy per block. Not reentrant: the runner launches one kernel at a time.
#pragma once
#include <cmath>
#include <math.h>  // after <cmath>: float overloads such as exp(float) in the global namespace, as in CUDA
#include <csetjmp>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <sys/mman.h>
#include <type_traits>
#include <unistd.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static
#define __syncthreads() emu::sync(__LINE__)

struct uint3 { unsigned x, y, z; };
typedef uint3 dim3;
static uint3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's min/max: one overload set for every arithmetic type, mixed types promote.
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmin(T(a), T(b)); else return b < a ? T(b) : T(a);
}
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmax(T(a), T(b)); else return a < b ? T(b) : T(a);
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <class T> inline T __ldg(const T* p) { return *p; }

// Threads never run at the same time here, so a plain read-modify-write is atomic. The second
// parameter does not take part in deduction: atomicAdd(float*, 1.0) converts 1.0, as in CUDA.
template <class T> struct same { typedef T type; };
template <class T> inline T atomicAdd(T* p, typename same<T>::type v) { T o = *p; *p = o + v; return o; }

extern "C" { uintptr_t emu_fault_addr; }  // the address of the last invalid access (checking mode)

namespace emu {
// Fiber switching. x86-64: a hand-written switch of the callee-saved registers (a few ns);
// elsewhere: ucontext (portable, but swapcontext makes a system call per switch).
#if defined(__x86_64__)
typedef void* ctx_t;
extern "C" void emu_swap(ctx_t* save, ctx_t load);
asm(".text\n.globl emu_swap\n.hidden emu_swap\n.type emu_swap,@function\nemu_swap:\n"
    "pushq %rbp\npushq %rbx\npushq %r12\npushq %r13\npushq %r14\npushq %r15\n"
    "movq %rsp,(%rdi)\nmovq %rsi,%rsp\n"
    "popq %r15\npopq %r14\npopq %r13\npopq %r12\npopq %rbx\npopq %rbp\nret\n");
inline void swap(ctx_t* save, ctx_t* load) { emu_swap(save, *load); }
inline void make(ctx_t* c, char* stack, size_t size, void (*entry)()) {
  void** sp = (void**)(stack + size);  // 16-byte aligned top
  *--sp = nullptr;                     // return address of entry(), which never returns
  *--sp = (void*)entry;                // where emu_swap's `ret` goes
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  *c = sp;
}
#else
}  // namespace emu
#include <ucontext.h>
namespace emu {
typedef ucontext_t ctx_t;
inline void swap(ctx_t* save, ctx_t* load) { swapcontext(save, load); }
inline void make(ctx_t* c, char* stack, size_t size, void (*entry)()) {
  getcontext(c); c->uc_stack.ss_sp = stack; c->uc_stack.ss_size = size; c->uc_link = nullptr;
  makecontext(c, entry, 0);
}
#endif

enum { RUN, WAIT, DONE };
// Per-thread stacks: reserved, not committed (kernels touch a few KiB). One mapping for all, so a
// library adds one memory map, not one per thread (the kernel limits a process's maps).
const size_t STACK = 1 << 18;
static void (*call)(void*);  // runs the kernel with its arguments (set by launch)
static void* body;
static bool fibers;          // false: threads run as plain calls, a barrier is a bug (bad_sync)
static int bad_sync;
static unsigned cur;         // the running thread
static std::vector<int> state, line;
static std::vector<ctx_t> ctx;
static char* stacks;
static unsigned nstacks;
static ctx_t sched;
static sigjmp_buf fault_jump;

inline void set_thread(unsigned t) {
  threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
}

inline void sync(int l) {
  if (!fibers) { bad_sync = l; return; }
  state[cur] = WAIT; line[cur] = l;
  swap(&ctx[cur], &sched);
  asm volatile("" ::: "memory");  // other threads wrote shared memory meanwhile
}

static void entry() {
  call(body);
  state[cur] = DONE;
  swap(&ctx[cur], &sched);
}

// One block as fibers: run every thread to its next barrier (or its end), then check the round.
inline int run_fibers(unsigned n, char* err, size_t errlen) {
  if (nstacks < n) {  // no fiber is alive between launches: the old stacks can go
    if (stacks) munmap(stacks, nstacks * STACK);
    void* s = mmap(nullptr, n * STACK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    stacks = s == MAP_FAILED ? nullptr : (char*)s;
    nstacks = stacks ? n : 0;
    if (!stacks) { snprintf(err, errlen, "no memory for %u fiber stacks", n); return 1; }
  }
  state.assign(n, RUN); line.assign(n, 0); ctx.resize(n);
  for (unsigned t = 0; t < n; ++t) make(&ctx[t], stacks + t * STACK, STACK, entry);
  for (;;) {
    for (unsigned t = 0; t < n; ++t)
      if (state[t] == RUN) { cur = t; set_thread(t); swap(&sched, &ctx[t]); }
    unsigned waiting = 0, other = 0;
    for (unsigned t = 0; t < n; ++t)
      if (state[t] == WAIT) {
        if (waiting++ && line[t] != line[other]) {
          snprintf(err, errlen, "block (%u,%u,%u): threads wait at different __syncthreads "
                   "(lines %d and %d)", blockIdx.x, blockIdx.y, blockIdx.z, line[other], line[t]);
          return 1;
        }
        other = t;
      }
    if (!waiting) return 0;
    if (waiting < n) {
      snprintf(err, errlen, "deadlock in block (%u,%u,%u): %u of %u threads wait at __syncthreads "
               "(line %d) while the others have exited", blockIdx.x, blockIdx.y, blockIdx.z,
               waiting, n, line[other]);
      return 1;
    }
    state.assign(n, RUN);
  }
}

inline int run_grid(char* err, size_t errlen) {
  const unsigned n = blockDim.x * blockDim.y * blockDim.z;
  for (blockIdx.z = 0; blockIdx.z < gridDim.z; ++blockIdx.z)
    for (blockIdx.y = 0; blockIdx.y < gridDim.y; ++blockIdx.y)
      for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x) {
        if (fibers) {
          if (int rc = run_fibers(n, err, errlen)) return rc;
        } else {
          for (unsigned t = 0; t < n; ++t) { set_thread(t); call(body); }
        }
      }
  if (bad_sync) {
    snprintf(err, errlen, "__syncthreads (line %d) reached by a kernel run without fibers", bad_sync);
    return 1;
  }
  return 0;
}

static void on_fault(int, siginfo_t* info, void*) {
  emu_fault_addr = (uintptr_t)info->si_addr;
  siglongjmp(fault_jump, 1);
}

// Returns 0, or 1 with a message in err, or 2 after an invalid access (address in emu_fault_addr).
template <class F>
int launch(const unsigned* d, bool use_fibers, bool check, char* err, size_t errlen, F f) {
  gridDim = {d[0], d[1], d[2]}; blockDim = {d[3], d[4], d[5]};
  fibers = use_fibers; bad_sync = 0;
  body = &f; call = [](void* p) { (*(F*)p)(); };
  if (!check) return run_grid(err, errlen);
  struct sigaction sa = {}, old_segv, old_bus;
  sa.sa_sigaction = on_fault; sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, &old_segv); sigaction(SIGBUS, &sa, &old_bus);
  volatile int rc = 2;
  if (!sigsetjmp(fault_jump, 1)) rc = run_grid(err, errlen);
  sigaction(SIGSEGV, &old_segv, nullptr); sigaction(SIGBUS, &old_bus, nullptr);
  return rc;
}
}  // namespace emu

// Checking mode's buffers: n bytes that end flush against a PROT_NONE page (so one element past the
// end faults), after a leading PROT_NONE page; the slack before the start is filled with 0xff bytes
// (NaN as float or double) and emu_guard_free reports whether the kernel wrote into it.
extern "C" char* emu_guard_alloc(size_t n) {
  const size_t pg = sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg;
  char* b = (char*)mmap(nullptr, len + 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                        -1, 0);
  if (b == MAP_FAILED) return nullptr;
  mprotect(b, pg, PROT_NONE); mprotect(b + pg + len, pg, PROT_NONE);
  memset(b + pg, 0xff, len - n);
  return b + pg + len - n;
}
extern "C" int emu_guard_free(char* p, size_t n) {
  const size_t pg = sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg;
  char* b = p + n - len - pg;
  int intact = 1;
  for (char* q = b + pg; q < p; ++q) intact &= *q == (char)0xff;
  munmap(b, len + 2 * pg);
  return intact;
}
