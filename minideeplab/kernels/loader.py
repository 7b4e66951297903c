"""Kernel sources: signatures, argument checks and the ``cuda`` module cache (ARCHITECTURE.md s. 5).

Both kernel devices read a ``.cu`` file through this module: ``cuda`` compiles it with NVRTC into a
``cupy.RawModule``, ``emu`` (``emu/runner.py``) with g++; both take their argument types from
``parse`` and check arguments with ``convert_args``, so a launch that is wrong on one is wrong on both.
CuPy is imported only inside the functions that need it.
"""
import functools
import re
from collections import namedtuple
from pathlib import Path

import numpy as np

from . import BLOCK, MAX_GRID

KERNEL_DIR = Path(__file__).resolve().parent
_REALS = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_SCALARS = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
            "long long": np.int64, "unsigned long long": np.uint64, "unsigned char": np.uint8}

# The kernels index in 32-bit int (a GPU emulates 64-bit division and modulo in software, many
# times slower). A grid-stride loop adds gridDim.x * blockDim.x, at most MAX_GRID blocks (grid_1d)
# of 1024 threads, to an index below an array's size: arrays of at most MAX_ELEMENTS elements keep
# that sum, and so every index, inside an int.
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
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


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
    ``real`` and ``BLOCK`` as macros, the include directories, C++17."""
    return ["-std=c++17", f"-Dreal={real}", f"-DBLOCK={BLOCK}",
            *(f"-I{d}" for d in include_dirs(path))]


def read_headers(path, text):
    """The files that ``text`` (of ``path``) includes with ``#include "name"``, recursively, each
    once: resolved path -> text. A name is looked up as the compilers do, next to the including
    file, then in ``include_dirs(path)``; one found nowhere is left to the compiler to report."""
    found = {}

    def visit(file, text):
        for name in _INCLUDE.findall(strip_comments(text)):
            header = next((d / name for d in (file.parent, *include_dirs(path))
                           if (d / name).is_file()), None)
            if header is not None and header.resolve() not in found:
                found[header.resolve()] = header.read_text()
                visit(header.resolve(), found[header.resolve()])

    visit(path, text)
    return found


def strip_comments(source):
    return re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.S)


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


@functools.lru_cache(maxsize=None)
def _int_range(dtype):
    """np.iinfo, built once per type: constructing it for every integer argument of every launch
    was a tenth of the launch path's host time on the GPU (cProfile, 3000 calls a step)."""
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


class Module:
    """A compiled ``.cu`` file: its kernels' signatures (``kernels``) and ``launch``."""

    def __init__(self, path, real, kernels):
        self.path, self.real, self.kernels = path, real, kernels

    def kernel(self, name, grid=None, block=None):
        """The signature of ``name``, after checking the launch shape when one is given."""
        if name not in self.kernels:
            raise ValueError(f"{self.path.name} has no kernel {name!r}; it has {sorted(self.kernels)}")
        if grid is not None:
            check_launch(name, grid, block)
        return self.kernels[name]


class CudaModule(Module):
    def __init__(self, path, real, kernels, raw):
        super().__init__(path, real, kernels)
        self.raw, self._functions = raw, {}

    def launch(self, kernel, grid, block, args):
        import cupy
        values = convert_args(self.kernel(kernel, grid, block), args, cupy.ndarray)
        if kernel not in self._functions:
            self._functions[kernel] = self.raw.get_function(kernel)
        self._functions[kernel](grid, block, tuple(values))


_modules = {}


def load_module(family, dtype):
    """``kernels/<family>.cu`` compiled by NVRTC with ``-Dreal=float|double``, once per device."""
    import cupy
    # Keyed by the name as given: every op asks at every call (~650 times a training step), and
    # resolving the file's path each time took a third of a default-preset step's host time on
    # the GPU (cProfile).
    key = (str(family), np.dtype(dtype), cupy.cuda.runtime.getDevice())
    if key not in _modules:
        path, real = source_path(family), real_name(dtype)
        source = path.read_text()
        kernels = parse(source, real, path.name, read_headers(path, source).values())
        raw = cupy.RawModule(code=source, options=tuple(options(path, real)))
        try:
            raw.compile()
        except cupy.cuda.compiler.CompileException as e:
            raise RuntimeError(f"{path.name} (real={real}) does not compile with NVRTC:\n{e}") from None
        _modules[key] = CudaModule(path, real, kernels, raw)
    return _modules[key]


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
