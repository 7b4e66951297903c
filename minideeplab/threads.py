"""Threads on the ``cpu`` device (ARCHITECTURE.md s. 2): the NumPy path splits its own work.

NumPy runs an element-wise pass on one core, and OpenBLAS's threads, which wait busily between
GEMMs, take the second core from whatever runs next. So ``limit(n)`` (train, evaluate and
predict's ``--threads``) gives the NumPy path ``n`` threads of its own and BLAS one: an op splits
its work with ``over(fn, n, size)``, ``fn(block)`` for contiguous blocks of range(n), a block per
thread, the caller's thread taking the first. NumPy releases the GIL inside its loops and BLAS
calls, so the blocks run at once.

Ops split where every output comes from one block alone: the channels of batch norm and of
im2col, the output rows of a GEMM, the images of a depthwise conv's forward, a ReLU's elements.
One block (one thread) makes exactly the calls the op made before it was split; with more, the
sums keep their order too, and only BLAS, which may pick another kernel for a smaller GEMM,
can change the last bits of a convolution's results.
"""
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

# A block below this many elements (of an element-wise pass; ``size``) costs less than handing
# it to another thread: waking a sleeping thread takes 10-100 us (66 us median on a 2-core VM,
# twice per split: the worker, then the caller waiting for it), and the GIL passes between them
# around every NumPy call. 2^18 measured best of 2^16-2^19 on the step (benchmarks/README.md).
MIN_WORK = 1 << 18

_threads, _pool = 1, None


def count():
    """Threads the NumPy path splits its work over."""
    return _threads


def set_count(n):
    """Split the NumPy path's work over ``n`` threads from now on (BLAS is left as it is)."""
    global _threads, _pool
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads: need a positive int, got {n!r}")
    if n != _threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = n


@contextmanager
def limit(n):
    """The NumPy path on ``n`` threads and BLAS on one inside the block, then as they were."""
    before = _threads
    set_count(n)
    try:
        with threadpool_limits(1):
            yield
    finally:
        set_count(before)


def over(fn, n, size):
    """``fn(block)`` for contiguous slices ``block`` covering range(n), at most one per thread,
    where ``fn`` over all of range(n) does the work of an element-wise pass over ``size``
    elements: each block gets at least MIN_WORK of it. Returns when every block is done (an
    exception in any is raised here); at once for n = 0."""
    global _pool
    if n == 0:
        return
    k = max(1, min(_threads, n, size // MIN_WORK))
    if k == 1:
        fn(slice(0, n))
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="minideeplab")
    edges = [n * i // k for i in range(k + 1)]
    rest = [_pool.submit(fn, slice(a, b)) for a, b in zip(edges[1:-1], edges[2:])]
    try:
        fn(slice(edges[0], edges[1]))
    finally:
        for f in rest:
            f.result()
