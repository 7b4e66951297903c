"""What one training step costs the host, measured on the CPU (issue 14; ARCHITECTURE.md s. 11).

For one step of a preset (forward, loss, backward, SGD, then the loss read, as ``train_step.py``
runs it) on ``emu``, which runs the ``cuda`` device's code path:

- **kernels**: the GPU kernels the step would launch on ``cuda``: our launches (``dev.launch``
  wrapped, as ``common.LaunchLog`` does) plus the array-library operations that become kernels
  there. Those are counted by running the step on ``Counted`` arrays, an ndarray subclass whose
  ufuncs (elementwise ops, reductions, matmul), copies (``astype``, ``copy``, a reshape that must
  copy, advanced indexing, item assignment) and ``xp`` functions (through a proxy of the device's
  ``xp``) each count one kernel, as CuPy launches one for each; ``zeros`` counts a memset, views
  (``reshape``, ``transpose``, basic slices, ``broadcast_to``, ``split``) and ``empty`` count
  nothing. Nested calls count once (the outermost).
- **syncs**: device-to-host synchronisations: a device value read on the host (``bool``,
  ``int``, ``float``, ``item``, a boolean-mask index, which needs the count of selected
  elements) or copied to the host; by phase (forward, backward, update, after the update).
- **host time**: the step with every kernel launch taken through the whole launch path (argument
  checks, module lookup) but the kernel itself not run, at a small crop (33x33, the preset's
  batch), where the array library's compute is small; the seconds inside our launch path; and,
  apart, the seconds of NumPy compute in the array-library calls (measured on ``Counted``
  arrays: on ``cuda`` each of those calls is a launch instead, with CuPy's host cost per call).
- **graph memory**: the bytes of the distinct buffers that the autograd graph holds at the end of
  the forward (every array reachable from the loss's creator through the Functions' attributes,
  parameters and BN statistics left out: they outlive the step), next to the bytes of those of
  them that the backward reads (an array argument of an op, ufunc or kernel during the backward),
  on ``emu``: the ``cuda`` path's arrays. (The NumPy path makes some arrays with ``np.``
  directly, not through ``xp``, so its reads are not all seen.)

Kernels and syncs do not depend on the image size (one launch per op whatever the shape): they are
counted at the small crop too. Graph memory is measured at the preset's size with the kernels
skipped and the GEMMs shape-only (zeros of the product's shape: the arrays have their real shapes,
not their values); for the full-size model (Xception-65, 513x513) at batch 2 (BN needs two
values per channel on the image-pooling branch), times the batch over 2
(every activation has the batch as its first axis).

    python benchmarks/host.py                     # default preset and full-size model
    python benchmarks/host.py --preset quick      # seconds: the harness
    python benchmarks/host.py --json benchmarks/results/host-before.json
"""
import argparse
import contextlib
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minideeplab.device import get_device  # noqa: E402
from minideeplab.function import Function  # noqa: E402
from minideeplab.functional.activation import _generators as dropout_generators  # noqa: E402
from minideeplab.tensor import Tensor  # noqa: E402
from benchmarks import train_step  # noqa: E402
from benchmarks.common import blas_threads, device_info, write_json  # noqa: E402

# xp functions that allocate, or make a view: no kernel on cuda.
_NO_KERNEL = {"empty", "empty_like", "broadcast_to", "split", "shape", "ndim", "result_type",
              "dtype", "isscalar", "iinfo", "finfo", "default_rng", "may_share_memory",
              "shares_memory"}
_MEMSET = {"zeros", "zeros_like"}
_COPY_IF_NEEDED = {"ascontiguousarray", "asarray", "reshape", "ravel"}


class Tally:
    """What the instrumented step did: kernels by name, memsets, host-to-device copies, syncs by
    phase, the buffers read (``reads``: id of the owning array -> that array) and the seconds
    spent inside the array library (``xp_s``)."""

    def __init__(self):
        self.kernels, self.syncs, self.reads = {}, {}, {}
        self.memsets = self.h2d = 0
        self.xp_s, self.depth, self.phase = 0.0, 0, "forward"
        self.shape_only_gemm = False

    def kernel(self, name, count=1):
        if count:
            self.kernels[name] = self.kernels.get(name, 0) + count

    def gemm(self, a, b, outer):
        """Tally ``a @ b``; the function that computes it (zeros when ``shape_only_gemm``)."""
        if outer:
            for name, n in matmul_kernels(a, b).items():
                self.kernel(name, n)
        return _gemm_shape_only if self.shape_only_gemm else np.matmul

    def sync(self, what):
        key = f"{self.phase}: {what}"
        self.syncs[key] = self.syncs.get(key, 0) + 1

    def read(self, *values):
        for v in values:
            if isinstance(v, np.ndarray):
                r = owner(v)
                self.reads[id(r)] = r
            elif isinstance(v, (list, tuple)):
                self.read(*v)

    @contextlib.contextmanager
    def call(self):
        """Around one array-library call: True for the outermost (the one that counts)."""
        self.depth += 1
        try:
            yield self.depth == 1
        finally:
            self.depth -= 1

    def timed(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, its seconds added to ``xp_s`` when it is the outermost call
        (the library's own time, without the tallying around it)."""
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        if self.depth == 1:
            self.xp_s += time.perf_counter() - t0
        return result


TALLY = [None]  # the Tally of the running instrumented step


def matmul_kernels(a, b):
    """The kernels ``cupy.matmul(a, b)`` launches (CuPy's ``_routines_linalg.matmul``): up to 2-D,
    one GEMM (``dot``), plus a copy of an operand that is neither C- nor F-contiguous; above 2-D,
    a copy of every operand that is not C-contiguous, then one strided batched GEMM, or, when a
    batch axis broadcasts, a batched GEMM over pointer arrays that take one kernel per batch axis
    for each of a, b and the output."""
    a, b = np.asarray(a), np.asarray(b)
    ndim = max(a.ndim, b.ndim)
    if ndim <= 2:
        copies = sum(not (x.flags.c_contiguous or x.flags.f_contiguous) for x in (a, b))
        return {"matmul: gemm": 1, "matmul: operand copy": copies}
    copies = sum(x.ndim > 1 and not x.flags.c_contiguous for x in (a, b))
    batch = [np.shape(x)[:-2] for x in (a, b)]
    batch = [(1,) * (ndim - 2 - len(s)) + s for s in batch]
    broadcast = any(p != q for p, q in zip(*batch))
    kernels = {"matmul: gemm": 1, "matmul: operand copy": copies}
    if broadcast:
        kernels["matmul: pointer arrays"] = 3 * (ndim - 2)
    return kernels


def _gemm_shape_only(a, b):
    """Zeros of ``a @ b``'s shape and dtype: the memory run's GEMMs, whose values it never needs."""
    a, b = np.asarray(a), np.asarray(b)
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    return np.zeros(shape, np.result_type(a, b))


def owner(a):
    """The array that owns ``a``'s memory (the end of its ``.base`` chain)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _plain(v):
    if isinstance(v, Counted):
        return v.view(np.ndarray)
    if isinstance(v, (list, tuple)):
        return type(v)(_plain(a) for a in v)
    return v


def _wrap(v):
    if isinstance(v, np.ndarray) and not isinstance(v, Counted):
        return v.view(Counted)
    if isinstance(v, np.generic):  # CuPy's reductions give 0-d arrays, not scalars
        return np.asarray(v).view(Counted)
    if isinstance(v, (list, tuple)):
        return type(v)(_wrap(a) for a in v)
    return v


class Counted(np.ndarray):
    """A NumPy array that tallies what the same operation would cost on CuPy (module docstring)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        tally = TALLY[0]
        with tally.call() as outer:
            tally.read(inputs, out or ())
            fn = getattr(ufunc, method)
            if ufunc is np.matmul and method == "__call__":
                fn = tally.gemm(*inputs[:2], outer)
                if out is not None:
                    kwargs["out"] = _plain(out)
            else:
                if outer:
                    tally.kernel(ufunc.__name__ + ("" if method == "__call__" else f".{method}"))
                if out is not None:
                    kwargs["out"] = _plain(out)
            result = tally.timed(fn, *_plain(inputs), **kwargs)
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        tally = TALLY[0]
        with tally.call() as outer:
            tally.read(args, list(kwargs.values()))
            if outer and func.__name__ not in _NO_KERNEL:
                tally.kernel(func.__name__)
            result = tally.timed(func, *_plain(args), **_plain(kwargs))
        return _wrap(result)

    def _copying(name):  # noqa: N805  (a factory of methods)
        def method(self, *args, **kwargs):
            tally = TALLY[0]
            with tally.call() as outer:
                tally.read(self)
                result = tally.timed(getattr(np.ndarray, name), self.view(np.ndarray), *args,
                                     **kwargs)
                copied = isinstance(result, np.ndarray) and not np.shares_memory(result, self)
                if outer and (copied or name in ("copy", "fill")):
                    tally.kernel(name)
            return _wrap(result)
        return method

    astype, copy, reshape, ravel, flatten, fill = map(
        _copying, ["astype", "copy", "reshape", "ravel", "flatten", "fill"])

    def __getitem__(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        advanced = [k for k in keys if isinstance(k, (np.ndarray, list))]
        tally = TALLY[0]
        if advanced and tally.depth == 0:
            tally.kernel("getitem (gather)")
            if any(np.asarray(k).dtype == bool for k in advanced):
                tally.sync("boolean-mask index")
        tally.read(self)
        return _wrap(np.ndarray.__getitem__(self.view(np.ndarray), _plain(key)))

    def __setitem__(self, key, value):
        tally = TALLY[0]
        if tally.depth == 0:
            tally.kernel("setitem")
        tally.read(value)
        np.ndarray.__setitem__(self.view(np.ndarray), _plain(key), _plain(value))

    def _syncing(name):  # noqa: N805
        def method(self, *args):
            TALLY[0].sync(name.strip("_"))
            return getattr(np.ndarray, name)(self.view(np.ndarray), *args)
        return method

    __bool__, __int__, __float__, __index__, item, tolist = map(
        _syncing, ["__bool__", "__int__", "__float__", "__index__", "item", "tolist"])


class _XP:
    """The device's ``xp`` as seen by the instrumented step: every function counts (module
    docstring) and returns ``Counted`` arrays; ``skip``: ``empty`` gives zeros, so arrays that
    skipped kernels would have written hold no denormals or NaNs."""

    def __init__(self, target, skip=False):
        self._target, self._skip = target, skip

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if isinstance(attr, types.ModuleType) or type(attr).__name__ == "Generator":
            return _XP(attr, self._skip)
        if not callable(attr) or isinstance(attr, type):
            return attr
        if self._skip and name in ("empty", "empty_like"):
            attr = getattr(self._target, name.replace("empty", "zeros"))

        def call(*args, **kwargs):
            tally = TALLY[0]
            with tally.call() as outer:
                tally.read(args)
                fn = tally.gemm(*args[:2], outer) if name == "matmul" else attr
                result = tally.timed(fn, *_plain(args), **_plain(kwargs))
                if outer and name != "matmul":
                    if name in _MEMSET:
                        tally.memsets += 1
                    elif name in _COPY_IF_NEEDED:
                        src = args[0] if args else None
                        if not isinstance(src, np.ndarray):
                            tally.h2d += name == "asarray"
                        elif not np.shares_memory(result, src):
                            tally.kernel(name)
                    elif name not in _NO_KERNEL:
                        tally.kernel(name)
            if type(result).__name__ == "Generator":
                return _XP(result, self._skip)
            return _wrap(result)
        return call


class _ZerosXP:
    """NumPy with ``empty`` giving zeros: the arrays that skipped kernels would have written hold
    no denormals or NaNs to slow the rest of the step down. Attributes are looked up once."""

    def __getattr__(self, name):
        attr = getattr(np, {"empty": "zeros", "empty_like": "zeros_like"}.get(name, name))
        setattr(self, name, attr)
        return attr


@contextlib.contextmanager
def instrumented(dev, tally=None, skip_kernels=False):
    """Run ``dev`` (emu or cpu) with ``Counted`` arrays tallied into ``tally`` (None: plain
    arrays, only ``skip_kernels``); ``skip_kernels``: every launch checks its arguments and looks
    its module up as usual, and returns without running the kernel."""
    cls, launch = type(dev), dev.launch
    cpu = get_device("cpu")
    generator = dropout_generators.get(dev.name)

    skipped = set()  # modules whose _call is a no-op while the context lasts
    timing = types.SimpleNamespace(launch_s=0.0)

    def counted_launch(module, kernel, grid, block, args):
        if tally is not None:
            tally.kernel(f"ours: {kernel}")
            tally.read(args)
            args = _plain(list(args))
        if skip_kernels and module not in skipped:
            module._call = lambda *a: None  # an instance attribute shadows the class's method
            skipped.add(module)
        t0 = time.perf_counter()
        launch(module, kernel, grid, block, args)
        timing.launch_s += time.perf_counter() - t0

    def to_host(array, dtype=None):
        if isinstance(array, Counted):
            TALLY[0].sync("copy to host")
        return np.asarray(_plain(array), dtype=dtype)

    xp = _XP(np, skip_kernels) if tally is not None else _ZerosXP() if skip_kernels else np

    class Instrumented(cls):
        @property
        def xp(self):
            return xp

        def asarray(self, array, dtype=None):
            if tally is None:
                return np.asarray(array, dtype=dtype)
            if not isinstance(array, Counted):
                tally.h2d += 1
            return np.asarray(array, dtype=dtype).view(Counted)

    dev.launch = counted_launch
    dev.__class__ = Instrumented
    if tally is not None:
        TALLY[0] = tally
        if dev != cpu:  # on cpu itself, Tensor.numpy() gives a Counted array: .item() counts
            cpu.asarray = to_host
        if generator is not None:  # dropout's generator, made before: its draws count too
            dropout_generators[dev.name] = _XP(generator)
    try:
        yield tally if tally is not None else timing
    finally:
        dev.__class__ = cls
        del dev.launch
        for module in skipped:
            del module._call
        cpu.__dict__.pop("asarray", None)
        if isinstance(dropout_generators.get(dev.name), _XP):
            dropout_generators[dev.name] = dropout_generators[dev.name]._target
        TALLY[0] = None


# -- the autograd graph's memory ---------------------------------------------------------------

def graph_buffers(root, exclude):
    """id -> owning array of every buffer the graph behind Tensor ``root`` holds: arrays in the
    attributes of its Functions (directly, in lists and tuples, as Tensors' data), ``exclude``d
    owners (ids) left out."""
    held, seen, todo = {}, set(), [root.creator]

    def visit(v):
        if isinstance(v, np.ndarray):
            r = owner(v)
            if id(r) not in exclude:
                held[id(r)] = r
        elif isinstance(v, Tensor):
            visit(v.data)
            if v.creator is not None:
                todo.append(v.creator)
        elif isinstance(v, Function):
            todo.append(v)
        elif isinstance(v, (list, tuple)):
            for a in v:
                visit(a)

    while todo:
        f = todo.pop()
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        for v in vars(f).values():
            visit(v)
    return held


def nbytes(buffers):
    return int(sum(b.nbytes for b in buffers.values()))


# -- one instrumented step -------------------------------------------------------------------

def step_phases(model, opt, images, labels, dev, tally, loss_read):
    """train_step.our_step in phases, ``tally.phase`` following them; -> graph bytes held at the
    end of the forward and the bytes of those buffers the backward reads."""
    exclude = {id(owner(p.data)) for p in model.parameters()}
    exclude |= {id(owner(getattr(m, k))) for _, m, k in model.named_buffers()}
    tally.phase = "forward"
    loss, value = train_step.forward_loss(model, images, labels, dev, loss_read == "before")
    held = graph_buffers(loss, exclude)
    tally.reads.clear()
    tally.phase = "backward"
    opt.zero_grad()
    loss.backward()
    needed = {k: v for k, v in held.items() if k in tally.reads}
    tally.phase = "update"
    opt.step()
    tally.phase = "after the update"
    if loss_read == "after":
        value = float(loss.item())
    return dict(graph_bytes=nbytes(held), backward_reads_bytes=nbytes(needed),
                graph_buffers=len(held), loss=value)


def counts(cfg, dev_name, repeat, crop=33):
    """Kernels, syncs and host time of one step of ``cfg``'s model at its batch and a small
    ``crop``: none of them depends on the image size (one launch per op whatever the shape), and
    the array library's compute, subtracted from the host time, is then small."""
    cfg, batch = dict(cfg, crop=crop), cfg["batch"]
    dev = get_device(dev_name)
    model, opt = train_step.build(cfg, dev_name)
    images, labels = train_step.make_batch(cfg, batch)
    step = lambda: train_step.our_step(model, opt, images, labels, dev_name)  # noqa: E731
    with instrumented(dev, skip_kernels=True) as timing:
        step()  # builds the modules
        times, launch_s = [], []
        for _ in range(repeat):
            timing.launch_s = 0.0
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            launch_s.append(timing.launch_s)
    xp_s = []
    for _ in range(repeat):  # the last one's counts (every step counts the same)
        tally = Tally()
        with instrumented(dev, tally, skip_kernels=True):
            step_phases(model, opt, images, labels, dev, tally, train_step.LOSS_READ)
        xp_s.append(tally.xp_s)
    ours = sum(n for k, n in tally.kernels.items() if k.startswith("ours: "))
    return dict(batch=batch, crop=crop, kernels=sum(tally.kernels.values()), our_launches=ours,
                xp_kernels=sum(tally.kernels.values()) - ours, memsets=tally.memsets,
                h2d_copies=tally.h2d, syncs=sum(tally.syncs.values()), syncs_by=tally.syncs,
                per_kernel=dict(sorted(tally.kernels.items(), key=lambda kv: -kv[1])),
                host_ms=1e3 * float(np.median(times)),
                launch_path_ms=1e3 * float(np.median(launch_s)),
                xp_ms=1e3 * float(np.median(xp_s)))


def memory(cfg, dev_name, batch, crop):
    """Graph bytes at the end of the forward and the bytes of them the backward reads, for one
    step of ``cfg``'s model at ``batch`` and ``crop``; on ``emu`` with the kernels skipped and the
    GEMMs shape-only (the arrays have their real shapes, not their values)."""
    cfg = dict(cfg, crop=crop)
    dev = get_device(dev_name)
    model, opt = train_step.build(cfg, dev_name)
    images, labels = train_step.make_batch(cfg, batch)
    tally = Tally()
    tally.shape_only_gemm = dev_name != "cpu"
    with instrumented(dev, tally, skip_kernels=True):
        mem = step_phases(model, opt, images, labels, dev, tally, train_step.LOSS_READ)
    mem.pop("loss")
    return dict(batch=batch, crop=crop, **mem)


def report(name, r):
    if "kernels" in r:
        print(f"-- {name}: one step (counted at batch {r['batch']}, crop {r['crop']})")
        print(f"   GPU kernels per step {r['kernels']} (ours {r['our_launches']}, array library "
              f"{r['xp_kernels']}), memsets {r['memsets']}, host-to-device copies "
              f"{r['h2d_copies']}")
        print(f"   device-to-host syncs {r['syncs']}: {r['syncs_by']}")
        print(f"   host time of the step, kernels skipped: {r['host_ms']:.1f} ms, of it "
              f"{r['launch_path_ms']:.1f} ms in our launch path; the array library's calls take "
              f"{r['xp_ms']:.1f} ms of NumPy compute at this size (on a GPU: launches)")
    for dev_name, m in r.get("memory", {}).items():
        scale = r["batch_full"] / m["batch"] if "batch_full" in r else 1
        print(f"   graph memory ({dev_name}, batch {m['batch']}, crop {m['crop']}): "
              f"{m['graph_bytes'] / 2**20:.1f} MiB at the end of the forward "
              f"({m['graph_buffers']} buffers), {m['backward_reads_bytes'] / 2**20:.1f} MiB of it "
              f"read by the backward: ratio "
              f"{m['graph_bytes'] / max(m['backward_reads_bytes'], 1):.3f}"
              + (f"; x{scale:g} at batch {r['batch_full']}: "
                 f"{scale * m['graph_bytes'] / 2**30:.2f} GiB and "
                 f"{scale * m['backward_reads_bytes'] / 2**30:.2f} GiB" if scale != 1 else ""))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["default", "full", "quick", "all"], default="all",
                   help="all: default and full")
    p.add_argument("--repeat", type=int, default=5, help="timed steps (median) of the host time")
    p.add_argument("--full-memory", type=int, nargs=2, default=(2, 513), metavar=("BATCH", "CROP"),
                   help="batch and crop of the full-size model's memory step (emu)")
    p.add_argument("--json", metavar="PATH", help="write the figures to PATH")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (1, as train.py: on 2 busy cores more threads wait)")
    args = p.parse_args(argv)
    blas_threads(args.threads)
    info = dict(device_info("emu"), loss_read=train_step.LOSS_READ)
    results = {}
    for name in ["default", "full"] if args.preset == "all" else [args.preset]:
        cfg = train_step.PRESETS[name]
        r = results[name] = counts(cfg, "emu", args.repeat)
        if name == "full":  # memory at batch 2 (BN needs 2 values a channel), times batch / 2
            r["batch_full"] = cfg["batch"]
            r["memory"] = {"emu": memory(cfg, "emu", *args.full_memory)}
        else:
            r["memory"] = {"emu": memory(cfg, "emu", cfg["batch"], cfg["crop"])}
        report(name, r)
    info["load_average_end"] = os.getloadavg()
    if args.json:
        write_json(args.json, info, host=results)
    return results


if __name__ == "__main__":
    main()
