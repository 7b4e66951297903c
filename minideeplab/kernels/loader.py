"""Kernel sources and modules (ARCHITECTURE.md s. 5), the part that ``cuda`` and ``emu`` share.

``load_module`` keeps one cache of built modules, keyed by (family, dtype, device). On a miss it
reads the ``.cu`` file (``read_source``: its text, the headers it includes, its kernels'
signatures from ``parse``) and asks the device to build it: ``cuda`` with NVRTC
(``nvrtc_module``), ``emu`` with g++ (``emu/runner.py``). Every ``Module.launch`` checks the
arguments with ``convert_args`` before the device calls the kernel, so a launch that is wrong on
one device is wrong on both. CuPy is imported only inside the functions that need it.
"""
import functools
import hashlib
import os
import re
from collections import namedtuple
from pathlib import Path

import numpy as np

from . import MACROS, MAX_GRID

KERNEL_DIR = Path(__file__).resolve().parent
_REALS = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SCALARS = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
            "long long": np.int64, "unsigned long long": np.uint64, "unsigned char": np.uint8}

# The kernels index in 32-bit int (ARCHITECTURE.md s. 5). A grid-stride loop adds
# gridDim.x * blockDim.x, at most MAX_GRID blocks (grid_1d) of 1024 threads, to an index below an
# array's size: arrays of at most MAX_ELEMENTS elements keep that sum, and so every index, inside
# an int.
MAX_ELEMENTS = 2**31 - 1 - MAX_GRID * 1024

# ctype: the C type as the wrapper spells it ("const real*"); dtype: the NumPy type it takes.
Param = namedtuple("Param", "name ctype dtype pointer const")
# syncs: the kernel may reach __syncthreads (the emulator then runs its threads as fibers).
Kernel = namedtuple("Kernel", "name params syncs")

_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
                     r'void\s+(\w+)\s*\(([^)]*)\)\s*\{')
_PARAM = re.compile(r"^(const\s+)?([a-z ]+?)\s*(\*?)\s*(?:const\s+)?(\w+)$")
_HELPER = re.compile(r"__device__\s[^;{}()]*?(\w+)\s*\([^)]*\)\s*\{")  # a __device__ function
_CALL = re.compile(r"\b(\w+)\s*\(")
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def real_name(dtype):
    """The C type that ``-Dreal=`` gets for a NumPy dtype."""
    if np.dtype(dtype) not in _REALS:
        raise ValueError(f"kernels take float32 or float64 arrays, got {np.dtype(dtype)}")
    return _REALS[np.dtype(dtype)]


def source_path(family):
    """``kernels/<family>.cu``, or ``family`` itself when it is a path to a ``.cu`` file."""
    path = Path(family) if str(family).endswith(".cu") else KERNEL_DIR / f"{family}.cu"
    if not path.is_file():
        raise ValueError(f"no kernel source {path}")
    return path.resolve()


def include_dirs(path):
    """Where ``#include "name"`` in ``path`` looks after the including file's own directory:
    ``path``'s directory, then ``kernels/`` (the shared headers, such as ``block_reduce.cuh``)."""
    return list(dict.fromkeys([path.parent, KERNEL_DIR]))


def options(path, real):
    """The flags every compile path (NVRTC, ``compile_check``, the emulator's g++) gives ``path``:
    ``real``, ``BLOCK`` and the tiled kernels' sizes (``kernels.MACROS``) as macros, the include
    directories, C++17."""
    return ["-std=c++17", f"-Dreal={real}", *(f"-D{k}={v}" for k, v in MACROS.items()),
            *(f"-I{d}" for d in include_dirs(path))]


def read_headers(path, text):
    """The files that ``text`` (of ``path``) includes with ``#include "name"``, recursively, each
    once: resolved path -> text. A name is looked up as the compilers do, next to the including
    file, then in ``include_dirs(path)``; one found nowhere is left to the compiler to report."""
    found = {}

    def visit(file, text):
        for name in _INCLUDE.findall(strip_comments(text)):
            places = [d / name for d in (file.parent, *include_dirs(path)) if (d / name).is_file()]
            header = places[0].resolve() if places else None
            if header is not None and header not in found:
                found[header] = header.read_text()
                visit(header, found[header])

    visit(path, text)
    return found


def strip_comments(source):
    """``source`` with its comments blanked out (each character but a newline becomes a space), so
    the code keeps its offsets and line numbers."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m[0]), source,
                  flags=re.DOTALL)


def parse(source, real, filename="<source>", headers=()):
    """The ``extern "C" __global__`` kernels of ``source`` and of the ``headers`` it includes (their
    texts): name -> Kernel, ``real`` bound."""
    code = strip_comments("\n".join([*headers, source]))
    params, functions = {}, []  # functions: (name, body start, body end) of kernels and helpers
    for m in _KERNEL.finditer(code):
        functions.append((m[1], m.end(), _body_end(code, m, filename)))
        params[m[1]] = [_param(filename, m[1], p, real) for p in m[2].split(",") if p.strip()]
    if len(params) != code.count("__global__"):
        raise ValueError(f"{filename}: every __global__ function must be written "
                         f'`extern "C" __global__ void name(type arg, ...)`')
    functions += [(m[1], m.end(), _body_end(code, m, filename)) for m in _HELPER.finditer(code)]
    syncs = _syncing(code, functions)
    return {name: Kernel(name, p, name in syncs) for name, p in params.items()}


def kernel_source(family, name):
    """Kernel ``name`` of ``kernels/<family>.cu`` (or a ``.cu`` path), or a ``__device__`` helper
    of the file or a header it includes, as it stands there, for the lessons to print: the ``//``
    lines right above its signature, the signature and its body."""
    path = source_path(family)
    text = path.read_text()
    names = []
    for source in (text, *read_headers(path, text).values()):
        code = strip_comments(source)
        for m in [*_KERNEL.finditer(code), *_HELPER.finditer(code)]:
            names.append(m[1])
            if m[1] != name:
                continue
            lines = source.split("\n")
            first = code.count("\n", 0, m.start())
            last = code.count("\n", 0, _body_end(code, m, path.name) - 1)
            while first > 0 and lines[first - 1].lstrip().startswith("//"):
                first -= 1
            return "\n".join(lines[first:last + 1])
    raise ValueError(f"kernel family {str(family)!r} ({path.name}) has no kernel or helper "
                     f"{name!r}; it has {sorted(names)}")


def _body_end(code, m, filename):
    """The index past the brace that closes the body which the match ``m`` ends by opening."""
    depth, end = 1, m.end()
    while depth:
        if end == len(code):
            raise ValueError(f"{filename}: unbalanced braces in {m[1]}")
        depth += {"{": 1, "}": -1}.get(code[end], 0)
        end += 1
    return end


def _syncing(code, functions):
    """The names of the ``functions`` that may reach ``__syncthreads``: in their own body, or in a
    helper they call (in the file or a header it includes). A barrier outside every body (in a
    macro, say) could be anywhere: then every function may."""
    spans = sorted((a, b) for _, a, b in functions)
    outside = "".join(code[a:b] for a, b in zip([0] + [b for _, b in spans],
                                                 [a for a, _ in spans] + [len(code)]))
    if "__syncthreads" in outside:
        return {name for name, _, _ in functions}
    calls = [(name, set(_CALL.findall(code[a:b])), "__syncthreads" in code[a:b])
             for name, a, b in functions]
    syncs = {name for name, _, barrier in calls if barrier}
    while more := {name for name, called, _ in calls if called & syncs} - syncs:
        syncs |= more
    return syncs


def _param(filename, kernel, text, real):
    m = _PARAM.match(" ".join(text.replace("__restrict__", " ").split()))
    base = m and ("real" if m[2] == "real" else m[2])
    if not m or (base != "real" and base not in _SCALARS):
        raise ValueError(f"{filename}: kernel {kernel}: parameter {text.strip()!r} is not "
                         f"real, {', '.join(_SCALARS)} or a pointer to one")
    dtype = np.dtype(_SCALARS[real] if base == "real" else _SCALARS[base])
    return Param(m[4], f"{m[1] or ''}{base}{m[3]}", dtype, bool(m[3]), bool(m[1]))


@functools.cache
def _int_range(dtype):
    """np.iinfo, built once per type rather than for every integer argument of every launch."""
    return np.iinfo(dtype)


def convert_args(kernel, args, array_type):
    """Check ``args`` against ``kernel``'s parameters; numbers become NumPy scalars of the C type.

    Arrays must be C-contiguous ``array_type`` arrays of the parameter's dtype (the kernel indexes
    them as flat memory and writes them in place) of at most MAX_ELEMENTS elements.
    """
    if len(args) != len(kernel.params):
        raise ValueError(f"kernel {kernel.name} takes {len(kernel.params)} arguments "
                         f"({', '.join(p.name for p in kernel.params)}), got {len(args)}")
    out = []
    for p, a in zip(kernel.params, args):
        where = f"kernel {kernel.name}: argument {p.name!r} ({p.ctype})"
        if p.pointer:
            if not isinstance(a, array_type):
                raise ValueError(f"{where} needs a {array_type.__module__} array, "
                                 f"got {type(a).__name__}")
            if a.dtype != p.dtype or not a.flags.c_contiguous:
                raise ValueError(f"{where} needs a C-contiguous {p.dtype} array, got {a.dtype} "
                                 f"shape {a.shape}{'' if a.flags.c_contiguous else ' (strided)'}")
            if not p.const and not getattr(a.flags, "writeable", True):
                raise ValueError(f"{where} is written, but the array is read-only")
            if a.size > MAX_ELEMENTS:
                raise ValueError(f"{where}: shape {a.shape} has {a.size} elements, more than the "
                                 f"{MAX_ELEMENTS} that the kernels' 32-bit indices reach")
            out.append(a)
        elif p.dtype.kind == "f" and isinstance(a, (int, float, np.integer, np.floating)):
            out.append(p.dtype.type(a))
        elif p.dtype.kind in "iu" and isinstance(a, (int, np.integer)):
            info = _int_range(p.dtype)
            if not info.min <= int(a) <= info.max:
                raise ValueError(f"{where}: {a} does not fit in {p.dtype}")
            out.append(p.dtype.type(a))
        else:
            raise ValueError(f"{where} needs a number, got {type(a).__name__}")
    return out


def check_launch(kernel, grid, block):
    """CUDA's launch limits, enforced on ``emu`` too so a launch that fails on a GPU fails there."""
    limits = ((2**31 - 1, 65535, 65535), (1024, 1024, 64))
    for what, dims, lim in (("grid", grid, limits[0]), ("block", block, limits[1])):
        if len(dims) != 3 or not all(1 <= d <= m for d, m in zip(dims, lim)):
            raise ValueError(f"kernel {kernel}: {what} {tuple(dims)} outside CUDA's limits "
                             f"1..{lim} per dimension")
    if block[0] * block[1] * block[2] > 1024:
        raise ValueError(f"kernel {kernel}: block {tuple(block)} has more than 1024 threads")


# path: the resolved .cu file; headers: resolved path -> text of every file it includes; kernels:
# name -> Kernel; stamp: the mtime and size of the file and of each header (changes on an edit).
Source = namedtuple("Source", "path real text headers kernels stamp")


def read_source(family, dtype):
    """The ``Source`` of ``kernels/<family>.cu`` (or a ``.cu`` path) with ``real`` = ``dtype``."""
    path, real = source_path(family), real_name(dtype)
    text = path.read_text()
    headers = read_headers(path, text)
    kernels = parse(text, real, path.name, headers.values())
    return Source(path, real, text, headers, kernels, _stamp([path, *headers]))


def _stamp(files):
    try:
        return tuple((s.st_mtime_ns, s.st_size) for s in map(os.stat, files))
    except OSError:  # a file is gone: read_source says which
        return None


class Module:
    """A built ``.cu`` file: its ``source``, its kernels' signatures (``kernels``) and ``launch``.

    A device's subclass says how a kernel is called (``_call``) and on which arrays
    (``array_type``)."""

    array_type = None

    def __init__(self, source):
        self.source = source
        self.path, self.real, self.kernels = source.path, source.real, source.kernels
        self._checked = {}  # launch signature -> Kernel: launches checked in full once

    def kernel(self, name, grid=None, block=None):
        """The signature of ``name``, after checking the launch shape when one is given."""
        if name not in self.kernels:
            raise ValueError(f"{self.path.name} has no kernel {name!r}; "
                             f"it has {sorted(self.kernels)}")
        if grid is not None:
            check_launch(name, grid, block)
        return self.kernels[name]

    def launch(self, kernel, grid, block, args):
        """Run ``kernel`` over ``grid`` blocks of ``block`` threads (3-tuples) on ``args``.

        The launch shape and the arguments are checked in full (``check_launch``,
        ``convert_args``) once per signature: kernel, grid, block, and per argument its type, and
        an array's shape, strides and dtype (and, on NumPy, writeability), an integer's value, a
        float's type only. A launch with a signature seen before is trusted; under
        ``kernels.full_checks()`` (the tests) every launch is checked."""
        from . import full_checks
        if full_checks():
            k = self.kernel(kernel, grid, block)
            self._call(k, grid, block, convert_args(k, args, self.array_type))
            return
        key = (kernel, grid, block, *map(self._signature, args))
        k = self._checked.get(key)
        if k is None:
            k = self.kernel(kernel, grid, block)
            values = convert_args(k, args, self.array_type)
            if len(self._checked) >= 4096:  # bounded: integer arguments are part of the key
                self._checked.clear()
            self._checked[key] = k
        else:
            values = [a if p.pointer else p.dtype.type(a) for p, a in zip(k.params, args)]
        self._call(k, grid, block, values)

    def _signature(self, a):
        """What ``convert_args`` checks of one argument, as a key of ``_checked``."""
        if isinstance(a, self.array_type):
            return type(a), a.shape, a.strides, a.dtype, self._writeable(a)
        return (type(a),) if isinstance(a, float) else (type(a), a)

    @staticmethod
    def _writeable(a):
        return True  # CuPy arrays have no read-only flag

    def _call(self, kernel, grid, block, values):
        raise NotImplementedError(f"{type(self).__name__}._call is abstract")


_modules = {}  # (family as given, dtype, device.build_target()) -> Module


def load_module(device, family, dtype):
    """``kernels/<family>.cu`` (or a ``.cu`` path) with ``real`` = ``dtype``, built by
    ``device.build(source)`` once per (family, dtype, device), and again when
    ``device.watch_sources`` and the file or a header it includes has changed since."""
    # Keyed by the name as given, not the resolved path: every op asks at every call, and a hit
    # costs one dict lookup (plus a stat per file where the device watches its sources).
    key = (str(family), np.dtype(dtype), device.build_target())
    module = _modules.get(key)
    if module is None or (device.watch_sources
                          and module.source.stamp != _stamp([module.path, *module.source.headers])):
        module = _modules[key] = device.build(read_source(family, dtype))
    return module


class CudaModule(Module):
    """A ``.cu`` file compiled by NVRTC into the ``cupy.RawModule`` ``raw``."""

    def __init__(self, source, raw):
        import cupy
        super().__init__(source)
        self.array_type, self.raw, self._functions = cupy.ndarray, raw, {}

    def _call(self, kernel, grid, block, values):
        if kernel.name not in self._functions:
            self._functions[kernel.name] = self.raw.get_function(kernel.name)
        self._functions[kernel.name](grid, block, tuple(values))


def nvrtc_module(source):
    """``source`` compiled by NVRTC for the current GPU: the ``cuda`` device's build."""
    import cupy
    # CuPy caches the binary on disk by the source text and the options alone: the included
    # headers' digest, in a trailing comment, makes an edited header compile anew.
    digest = hashlib.sha256("\0".join(source.headers.values()).encode()).hexdigest()
    raw = cupy.RawModule(code=f"{source.text}\n// headers: {digest}\n",
                         options=tuple(options(source.path, source.real)))
    try:
        raw.compile()
    except cupy.cuda.compiler.CompileException as e:
        raise RuntimeError(f"{source.path.name} (real={source.real}) does not compile with "
                           f"NVRTC:\n{e}") from None
    return CudaModule(source, raw)


def compile_check(family, real="float", arch="compute_90"):
    """NVRTC's log for ``family`` (a name or a ``.cu`` path); RuntimeError with the log on failure.

    Needs only the NVRTC library (pip ``nvidia-cuda-nvrtc``), no GPU: CI runs it on every kernel.
    """
    from cupy.cuda import nvrtc
    path = source_path(family)
    prog = nvrtc.createProgram(path.read_text(), path.name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*options(path, real), f"--gpu-architecture={arch}"])
        except nvrtc.NVRTCError:
            raise RuntimeError(f"{path.name} (real={real}, {arch}) does not compile:\n"
                               f"{nvrtc.getProgramLog(prog)}") from None
        return nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
