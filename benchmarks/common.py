"""Timing and counting helpers shared by the benchmarks (DESIGN.md s. 10).

Bytes are those that *must* move (each input read once, each output written once), counted by hand
per op, so GB/s says how close an implementation is to the memory bound; FLOPs count a
multiply-add as 2.
"""
import time

import numpy as np


def gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, or CuPy without a driver
        return False


def cpu_ms(fn, repeat=5, warmup=1):
    """Median wall time of ``fn()`` in milliseconds (time.perf_counter)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def gpu_ms(fn, repeat=20, warmup=3):
    """Median GPU time of ``fn()`` in milliseconds, between CUDA events, after a warm-up."""
    import cupy
    for _ in range(warmup):
        fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def nbytes(*shapes, itemsize=4):
    """Bytes of arrays of the given shapes, each moved once."""
    return itemsize * sum(int(np.prod(s)) for s in shapes)


def conv_flops(n, cin, cout, ho, wo, kh, kw, groups=1):
    """2 x the multiply-adds of a convolution: output elements x taps x input channels per group."""
    return 2 * n * cout * ho * wo * kh * kw * (cin // groups)


def report(name, ms, n_bytes, flops, extra=""):
    """One line: time, achieved bandwidth and arithmetic throughput."""
    line = (f"{name:<44} {ms:9.2f} ms {n_bytes / ms / 1e6:8.1f} GB/s "
            f"{flops / ms / 1e6:8.1f} GFLOP/s")
    print(line + (f"  {extra}" if extra else ""), flush=True)
    return dict(name=name, ms=ms, gbps=n_bytes / ms / 1e6, gflops=flops / ms / 1e6)
