"""Timing and counting helpers shared by the benchmarks (ARCHITECTURE.md s. 11).

Bytes are those that *must* move (each input read once, each output written once), counted by hand
per op, so GB/s says how close an implementation is to the memory bound; FLOPs count a
multiply-add as 2.
"""
import ctypes
import datetime
import importlib.metadata
import json
import os
import platform
import time
from collections import namedtuple

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


def report(name, ms, n_bytes, flops, extra="", peak_gbps=None):
    """One line: time, achieved bandwidth and arithmetic throughput; with ``peak_gbps`` (a
    measured copy bandwidth) also the fraction of it reached."""
    gbps, gflops = n_bytes / ms / 1e6, flops / ms / 1e6
    line = f"{name:<44} {ms:9.3f} ms {gbps:8.1f} GB/s {gflops:8.1f} GFLOP/s"
    if peak_gbps:
        line += f" {100 * gbps / peak_gbps:5.1f}% of copy"
    print(line + (f"  {extra}" if extra else ""), flush=True)
    return dict(name=name, ms=ms, bytes=n_bytes, flops=flops, gbps=gbps, gflops=gflops,
                frac_peak_bw=gbps / peak_gbps if peak_gbps else None)


def timer(device, repeat):
    """``fn -> ms`` for ``device``: CUDA events on cuda (4x the repeats, they are cheap there),
    perf_counter medians on cpu and emu."""
    if device == "cuda":
        return lambda fn: gpu_ms(fn, repeat=4 * repeat)
    return lambda fn: cpu_ms(fn, repeat)


def synchronize(device):
    """Wait for the GPU (a no-op on cpu and emu, whose ops are synchronous)."""
    if device == "cuda":
        import cupy
        cupy.cuda.Device().synchronize()


# -- measured peaks ---------------------------------------------------------------------------
# Fractions of peak are against what this machine was measured to do, not a datasheet constant.

def _xp(device):
    if device == "cuda":
        import cupy
        return cupy
    return np


def copy_bandwidth(device, mbytes=256, repeat=5):
    """GB/s of a large device-to-device copy (one read + one write per element): the memory
    roof. On cpu and emu a NumPy copy, i.e. one core's bandwidth, which is what NumPy's
    element-wise code gets."""
    xp = _xp(device)
    a = xp.ones(mbytes * 2**20 // 4, np.float32)
    b = xp.empty_like(a)
    ms = timer(device, repeat)(lambda: xp.copyto(b, a))
    return 2 * a.nbytes / ms / 1e6


def gemm_gflops(device, n=None, repeat=3):
    """GFLOP/s of an n x n FP32 matrix product (cuBLAS / the BLAS NumPy uses): the compute roof
    that GEMM-bound ops (1x1 and im2col convs) can reach. CuPy keeps TF32 off unless CUPY_TF32=1."""
    xp = _xp(device)
    n = n or (8192 if device == "cuda" else 1024)
    a = xp.ones((n, n), np.float32)
    ms = timer(device, repeat)(lambda: a @ a)
    return 2 * n**3 / ms / 1e6


# -- what ran where ---------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical CPUs)"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def _openblas():
    """NumPy's OpenBLAS as a ctypes library with its symbol prefix, or None (another BLAS)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", ""),
                                   ("openblas", "64_")):
                if hasattr(lib, f"{prefix}_get_num_threads{suffix}"):
                    return lib, prefix, suffix
    except OSError:
        pass
    return None


def blas_threads(n=None):
    """Threads of NumPy's BLAS (OpenBLAS: read, and set when ``n`` is given; None if unknown),
    so a PyTorch comparison can use the same number."""
    found = _openblas()
    if found is None:
        return None
    lib, prefix, suffix = found
    if n is not None:
        getattr(lib, f"{prefix}_set_num_threads{suffix}")(int(n))
    return getattr(lib, f"{prefix}_get_num_threads{suffix}")()


def set_threads(n):
    """Our side on ``n`` threads as ``--threads n`` runs train.py: the NumPy path's own
    (minideeplab.threads) and BLAS on one."""
    from minideeplab import threads
    threads.set_count(n)
    blas_threads(1)


def device_info(device):
    """Device name, date and library versions for a results file; ``threads``: the NumPy
    path's."""
    from minideeplab import threads
    info = dict(device=device, date=datetime.date.today().isoformat(), cpu=cpu_model(),
                numpy=np.__version__, python=platform.python_version(),
                blas_threads=blas_threads(), threads=threads.count(),
                load_average=os.getloadavg())
    if device == "cuda":
        import cupy
        rt = cupy.cuda.runtime
        info.update(name=rt.getDeviceProperties(0)["name"].decode(), cupy=cupy.__version__,
                    driver=rt.driverGetVersion(), cuda_runtime=rt.runtimeGetVersion())
    else:
        info["name"] = info["cpu"] if device == "cpu" else f"emulator on {info['cpu']}"
    try:  # the version without importing torch (the tests run these scripts without it)
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def write_json(path, info, **results):
    """``{"info": info, **results}`` to ``path`` (folders made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(info=info, **results), f, indent=1, default=float)
    print(f"wrote {path}")


def default_json_path(info):
    """benchmarks/results/<device>-<date>.json, the device name made file-safe."""
    slug = "".join(c if c.isalnum() else "-" for c in info["name"].lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:40]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"{slug}-{info['date']}.json")


# -- kernel launches --------------------------------------------------------------------------
Launch = namedtuple("Launch", "module kernel grid block args host_s")


class LaunchLog:
    """Inside ``with LaunchLog(dev) as log:`` every ``dev.launch`` is recorded in ``log.calls``
    (kernel name, grid, block, the arguments when ``keep_args``, host seconds spent launching).
    ``log.replay(call)`` launches a recorded call again: a single kernel timed on its own, with
    the exact arguments the op gave it. ``gpu_events`` (cuda): a CUDA event pair around every
    launch, so ``log.gpu_ms()`` is the GPU time of the logged kernels (the events cost host time:
    take host times from a log without them)."""

    def __init__(self, dev, keep_args=True, gpu_events=False):
        self.dev, self.keep_args, self.calls, self.events = dev, keep_args, [], []
        self.gpu_events = gpu_events

    def __enter__(self):
        self._launch = self.dev.launch  # the bound method of the device's class

        def launch(module, kernel, grid, block, args):
            if self.gpu_events:
                import cupy
                self.events.append((cupy.cuda.Event(), cupy.cuda.Event()))
                self.events[-1][0].record()
            t0 = time.perf_counter()
            self._launch(module, kernel, grid, block, args)
            host_s = time.perf_counter() - t0
            if self.gpu_events:
                self.events[-1][1].record()
            self.calls.append(Launch(module, kernel, grid, block,
                                     args if self.keep_args else None, host_s))
        self.dev.launch = launch  # an instance attribute shadows the method for every op
        return self

    def gpu_ms(self):
        import cupy
        if self.events:
            self.events[-1][1].synchronize()
        return sum(cupy.cuda.get_elapsed_time(a, b) for a, b in self.events)

    def __exit__(self, *exc):
        del self.dev.launch

    def replay(self, call):
        self._launch(call.module, call.kernel, call.grid, call.block, call.args)


def run_op_benchmark(doc, cases, run_case):
    """The command line shared by the per-op scripts (norm.py, resize.py): every case on the CPU
    and, when there is one, the GPU; then PyTorch on the same cases when it is importable.
    ``run_case(name, batch, repeat, device)`` -> (rows of (name, ms, bytes, flops), torch_run)."""
    import argparse
    import importlib.util
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 and 3 repeats (under a minute)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8, --quick 1)")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions (median)")
    args = p.parse_args()
    batch = args.batch or (1 if args.quick else 8)
    repeat = args.repeat or (3 if args.quick else 5)
    has_torch = importlib.util.find_spec("torch") is not None
    for device in ["cpu"] + (["cuda"] if gpu_available() else []):
        print(f"-- {device}, batch {batch}, float32")
        done = [run_case(name, batch, repeat, device) for name in cases]
        # PyTorch after all of ours: on 2 cores the BLAS and OpenMP threads of the two libraries
        # spin against each other when they alternate.
        if has_torch and (device == "cpu" or __import__("torch").cuda.is_available()):
            for rows, torch_run in done:
                for (name, ms, moved, flops), t in zip(rows, torch_run()):
                    report(f"torch {name}", t, moved, flops, f"ours {ms / t:.2f}x torch's time")
