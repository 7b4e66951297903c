"""The ``emu`` device's kernel runner: the ``.cu`` source compiled with g++ and called with ctypes.

ARCHITECTURE.md s. 6. ``cuda_emu.h`` supplies CUDA's built-ins; this module generates one launch wrapper
per ``extern "C" __global__`` signature (parsed by ``kernels/loader.py``, as on ``cuda``), caches the
shared library by a hash of everything that goes into it, and runs kernels on NumPy arrays in place.

Checking mode (``check_mode()``, or the environment variable ``MINIDEEPLAB_EMU_CHECK=1``) copies
every array argument into a buffer that ends flush against an inaccessible page, so a read or write
even one element past the end faults; the fault is caught and raised as ``KernelError`` naming the
kernel and the argument. Deadlocks (some threads at a barrier, others exited) raise in every mode.
"""
import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from ..kernels.loader import (Module, convert_args, options, parse, read_headers, real_name,
                              source_path)

HEADER = Path(__file__).resolve().with_name("cuda_emu.h")
FLAGS = ["-O1", "-shared", "-fPIC", "-U_FORTIFY_SOURCE", "-x", "c++"]
_check = [None]  # None: follow MINIDEEPLAB_EMU_CHECK
_lock = threading.Lock()  # the emulator's built-ins are globals of the library: one launch at a time
_modules = {}
ERR_BYTES = 512  # the message buffer a launch wrapper writes into


class KernelError(RuntimeError):
    """A kernel deadlocked, or read or wrote outside its buffers."""


@contextlib.contextmanager
def check_mode(on=True):
    """Run ``emu`` kernels with out-of-bounds checks inside this block (the tests turn it on)."""
    old, _check[0] = _check[0], on
    try:
        yield
    finally:
        _check[0] = old


def checking():
    if _check[0] is None:
        return os.environ.get("MINIDEEPLAB_EMU_CHECK", "0") not in ("", "0")
    return _check[0]


def cache_dir():
    """``$MINIDEEPLAB_CACHE/emu``, by default under the user's cache directory."""
    root = os.environ.get("MINIDEEPLAB_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minideeplab"
    return Path(root) / "emu"


def _wrapper(k):
    args = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(k.params))
    return (f'extern "C" int emu_launch_{k.name}(const unsigned* d, void** a, int check, char* err) '
            f'{{\n  return emu::launch(d, {str(k.syncs).lower()}, check, err, {ERR_BYTES}, '
            f'[&] {{ {k.name}({args}); }});\n}}\n')


def _compile(cxx, flags, code, target, cwd):
    """Build ``code`` into ``target`` through a temporary name, so parallel builds never clash.
    g++ reads ``code`` from stdin and looks up its quoted includes in ``cwd`` first, as it would
    next to the ``.cu`` file."""
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    run = subprocess.run([cxx, *flags, "-o", str(tmp), "-"], input=code, capture_output=True,
                         text=True, cwd=cwd)
    if run.returncode:
        tmp.unlink(missing_ok=True)
        return run.stderr
    os.replace(tmp, target)


def load_module(family, dtype):
    """``kernels/<family>.cu`` (or a ``.cu`` path) compiled for the host with ``-Dreal=...``."""
    path, real = source_path(family), real_name(dtype)
    stat = path.stat()
    key = (path, real, stat.st_mtime_ns, stat.st_size)
    if key in _modules:
        return _modules[key]
    source = path.read_text()
    headers = read_headers(path, source)
    kernels = parse(source, real, path.name, headers.values())
    code = (f'#include "{HEADER}"\n#line 1 "{path}"\n{source}\n#line 1 "<emu launch wrappers>"\n'
            + "".join(map(_wrapper, kernels.values())))
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError(f"the emu device compiles kernels with a C++ compiler, and "
                           f"{os.environ.get('CXX', 'g++')!r} was not found: install g++ "
                           f"(apt-get install g++) or set CXX")
    flags = FLAGS + options(path, real)
    digest = hashlib.sha256("\0".join([code, HEADER.read_text(), *headers.values(), cxx, *flags])
                            .encode()).hexdigest()
    target = cache_dir().absolute() / f"{path.stem}-{real}-{digest[:24]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        log = _compile(cxx, flags, code, target, path.parent)
        if log is not None:
            raise RuntimeError(f"{path.name} (real={real}) does not compile with {cxx}:\n{log}")
    _modules[key] = EmuModule(path, real, kernels, ctypes.CDLL(str(target)))
    return _modules[key]


class EmuModule(Module):
    """A ``.cu`` file compiled for the host into the shared library ``lib``."""

    def __init__(self, path, real, kernels, lib):
        super().__init__(path, real, kernels)
        self._lib = lib
        lib.emu_guard_alloc.restype = ctypes.c_void_p
        lib.emu_guard_alloc.argtypes = [ctypes.c_size_t]
        lib.emu_guard_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._fault = ctypes.c_size_t.in_dll(lib, "emu_fault_addr")

    def launch(self, kernel, grid, block, args):
        k = self.kernel(kernel, grid, block)
        values = convert_args(k, args, np.ndarray)
        check = checking()
        with _lock:
            guarded = {}  # (address, bytes) -> [guard buffer, written?, names]: aliases share one
            try:
                argv = []
                for p, v in zip(k.params, values):
                    if not p.pointer:
                        argv.append(np.ctypeslib.as_ctypes_type(v.dtype)(v))
                        continue
                    address = v.ctypes.data
                    if check:
                        g = guarded.setdefault((address, v.nbytes), [None, False, []])
                        if g[0] is None:
                            g[0] = self._lib.emu_guard_alloc(v.nbytes)
                            if g[0] is None:
                                raise MemoryError(f"no guard buffer of {v.nbytes} bytes")
                            ctypes.memmove(g[0], address, v.nbytes)
                        g[1] |= not p.const
                        g[2].append((p.name, v))
                        address = g[0]
                    argv.append(ctypes.c_void_p(address))
                err = ctypes.create_string_buffer(ERR_BYTES)
                rc = getattr(self._lib, f"emu_launch_{kernel}")(
                    (ctypes.c_uint * 6)(*grid, *block),
                    (ctypes.c_void_p * len(argv))(*[ctypes.addressof(a) for a in argv]),
                    int(check), err)
                if rc == 2:
                    raise KernelError(f"kernel {kernel}: {self._fault_message(guarded)}")
                if rc:
                    raise KernelError(f"kernel {kernel}: {err.value.decode()}")
                for (address, nbytes), (g, written, _) in guarded.items():
                    if written:
                        ctypes.memmove(address, g, nbytes)
            finally:
                bad = [names for (_, nbytes), (g, _, names) in guarded.items()
                       if g is not None and not self._lib.emu_guard_free(g, nbytes)]
            if bad:
                raise KernelError(f"kernel {kernel}: wrote before the start of argument "
                                  f"{bad[0][0][0]!r}")

    def _fault_message(self, guarded):
        fault, page = self._fault.value, os.sysconf("SC_PAGESIZE")
        for (_, nbytes), (g, _, names) in guarded.items():
            if g - 2 * page <= fault < g + nbytes + page:
                name, v = names[0]
                i = (fault - g) // v.itemsize
                side = f"{i - v.size} past the end" if i >= v.size else f"{-i} before the start"
                return (f"out-of-bounds access to argument {name!r} ({v.dtype}, shape {v.shape}): "
                        f"element {i}, {side}")
        return f"invalid memory access at address {fault:#x}, outside every argument buffer"
