"""The ``emu`` device's build and call (ARCHITECTURE.md s. 6): a ``.cu`` source compiled with g++
and its kernels called with ctypes on NumPy arrays, in place.

``cuda_emu.h`` supplies CUDA's built-ins; ``build`` adds one launch wrapper per kernel signature
(``launch_wrapper``; the signatures come from ``kernels/loader.py``, as on ``cuda``, which also
keeps the module cache) and caches the shared library by a hash of everything that goes into it.

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

from ..kernels.loader import Module, options

HEADER = Path(__file__).resolve().with_name("cuda_emu.h")
FLAGS = ["-O1", "-shared", "-fPIC", "-U_FORTIFY_SOURCE", "-x", "c++"]
_check = [None]  # None: follow MINIDEEPLAB_EMU_CHECK
_lock = threading.Lock()  # the built-ins are globals of the library: one launch at a time
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


def launch_wrapper(k):
    """The C++ function through which ctypes launches kernel ``k`` (a ``loader.Kernel``): it casts
    each argument from ``a`` and runs the grid ``d``, its threads as fibers if ``k.syncs``."""
    args = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(k.params))
    return (f'extern "C" int emu_launch_{k.name}(const unsigned* d, void** a, int check, '
            f'char* err) {{\n  return emu::launch(d, {str(k.syncs).lower()}, check, err, '
            f'{ERR_BYTES}, [&] {{ {k.name}({args}); }});\n}}\n')


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


def build(source):
    """``source`` (a ``loader.Source``) compiled for the host: the ``emu`` device's build."""
    code = (f'#include "{HEADER}"\n#line 1 "{source.path}"\n{source.text}\n'
            f'#line 1 "<emu launch wrappers>"\n'
            + "".join(map(launch_wrapper, source.kernels.values())))
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError(f"the emu device compiles kernels with a C++ compiler, and "
                           f"{os.environ.get('CXX', 'g++')!r} was not found: install g++ "
                           f"(apt-get install g++) or set CXX")
    flags = FLAGS + options(source.path, source.real)
    digest = hashlib.sha256("\0".join([code, HEADER.read_text(), *source.headers.values(), cxx,
                                       *flags]).encode()).hexdigest()
    target = cache_dir().absolute() / f"{source.path.stem}-{source.real}-{digest[:24]}.so"
    if not _intact(target):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            log = _compile(cxx, flags, code, target, source.path.parent)
            if log is None:
                _write_stamp(target)
        except OSError as e:
            raise RuntimeError(f"the emu kernel cache {target.parent} is not writable ({e}); set "
                               f"MINIDEEPLAB_CACHE to a writable folder") from None
        if log is not None:
            raise RuntimeError(f"{source.path.name} (real={source.real}) does not compile with "
                               f"{cxx}:\n{log}")
    return EmuModule(source, ctypes.CDLL(str(target)))


def _stamp(target):
    """The size and SHA-256 of a built library, as its stamp file records them."""
    data = target.read_bytes()
    return f"{len(data)} {hashlib.sha256(data).hexdigest()}\n"


def _write_stamp(target):
    """Written after the library is in place: a library without a matching stamp (a build killed
    half-way, a truncated or overwritten file) is rebuilt rather than loaded, since loading a
    truncated library kills the process (SIGBUS) instead of raising."""
    stamp = target.with_suffix(".stamp")
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(_stamp(target))
    os.replace(tmp, stamp)


def _intact(target):
    stamp = target.with_suffix(".stamp")
    try:
        return stamp.read_text() == _stamp(target)
    except OSError:  # no library or no stamp yet
        return False


class EmuModule(Module):
    """A ``.cu`` file compiled for the host into the shared library ``lib``."""

    array_type = np.ndarray

    def __init__(self, source, lib):
        super().__init__(source)
        self._lib = lib
        lib.emu_guard_alloc.restype = ctypes.c_void_p
        lib.emu_guard_alloc.argtypes = [ctypes.c_size_t]
        lib.emu_guard_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._fault = ctypes.c_size_t.in_dll(lib, "emu_fault_addr")

    @staticmethod
    def _writeable(a):
        return a.flags.writeable

    def _call(self, kernel, grid, block, values):
        check = checking()
        with _lock:
            guarded = {}  # (address, bytes) -> [guard buffer, written?, names]: aliases share one
            try:
                argv = []
                for p, v in zip(kernel.params, values):
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
                rc = getattr(self._lib, f"emu_launch_{kernel.name}")(
                    (ctypes.c_uint * 6)(*grid, *block),
                    (ctypes.c_void_p * len(argv))(*[ctypes.addressof(a) for a in argv]),
                    int(check), err)
                if rc == 2:
                    raise KernelError(f"kernel {kernel.name}: {self._fault_message(guarded)}")
                if rc:
                    raise KernelError(f"kernel {kernel.name}: {err.value.decode()}")
                for (address, nbytes), (g, written, _) in guarded.items():
                    if written:
                        ctypes.memmove(address, g, nbytes)
            finally:
                bad = [names for (_, nbytes), (g, _, names) in guarded.items()
                       if g is not None and not self._lib.emu_guard_free(g, nbytes)]
            if bad:
                raise KernelError(f"kernel {kernel.name}: wrote before the start of argument "
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
