"""The three devices (ARCHITECTURE.md section 2): ``cpu``, ``cuda`` and ``emu``.

An op asks its device for two things only: ``dev.xp`` (numpy or cupy) and, on the kernel path,
``dev.launch(module, kernel, grid, block, args)``. ``cuda`` and ``emu`` share the kernel path, so a
test on ``emu`` runs the same ``.cu`` source and the same launch code as the GPU.
"""
import numpy as np


class Device:
    """One place where arrays live and ops run."""

    name = None
    uses_kernels = False  # True: ops take the kernel path (cuda, emu); False: NumPy (cpu)

    @property
    def xp(self):
        return np

    def asarray(self, array, dtype=None):
        """Move ``array`` (NumPy or CuPy) onto this device."""
        if type(array).__module__.startswith("cupy"):
            array = array.get()
        return np.asarray(array, dtype=dtype)

    def module(self, family, dtype):
        """The compiled kernels of ``kernels/<family>.cu`` with ``real`` = ``dtype``."""
        raise ValueError(f"device {self.name!r} runs no hand-written kernels")

    def launch(self, module, kernel, grid, block, args):
        """Run ``module``'s ``kernel`` over ``grid`` blocks of ``block`` threads."""
        raise ValueError(f"device {self.name!r} runs no hand-written kernels")

    def __eq__(self, other):
        if isinstance(other, Device):
            return self.name == other.name
        return self.name == other

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return self.name


class CPU(Device):
    name = "cpu"


class CUDA(Device):
    """CuPy arrays; kernels through ``cupy.RawModule``; GEMMs through cuBLAS."""

    name = "cuda"
    uses_kernels = True

    def __init__(self):
        try:
            import cupy
        except ImportError as e:
            raise ValueError("device 'cuda' needs CuPy: pip install cupy-cuda13x "
                             "(or the wheel matching your CUDA driver, see README)") from e
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError without a driver
            raise ValueError(f"device 'cuda': CuPy sees no GPU ({e})") from None
        if count == 0:
            raise ValueError("device 'cuda': CuPy sees no GPU")
        self._cp = cupy

    @property
    def xp(self):
        return self._cp

    def asarray(self, array, dtype=None):
        return self._cp.asarray(array, dtype=dtype)

    def module(self, family, dtype):
        from .kernels.loader import load_module
        return load_module(family, dtype)

    def launch(self, module, kernel, grid, block, args):
        module.launch(kernel, _dim3(grid), _dim3(block), args)


class Emu(Device):
    """NumPy arrays; kernels compiled from the same ``.cu`` source for the host (``emu/``)."""

    name = "emu"
    uses_kernels = True

    def module(self, family, dtype):
        from .emu.runner import load_module
        return load_module(family, dtype)

    def launch(self, module, kernel, grid, block, args):
        module.launch(kernel, _dim3(grid), _dim3(block), args)


def _dim3(v):
    v = (v,) if np.isscalar(v) else tuple(v)
    return tuple(int(a) for a in v) + (1,) * (3 - len(v))


_DEVICES = {"cpu": CPU, "cuda": CUDA, "emu": Emu}
_cache = {}


def get_device(device=None):
    """The Device named ``device`` ("cpu", "cuda", "emu"; a Device passes through; None = cpu)."""
    if isinstance(device, Device):
        return device
    device = "cpu" if device is None else device
    if device not in _DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {sorted(_DEVICES)}")
    if device not in _cache:
        _cache[device] = _DEVICES[device]()
    return _cache[device]


def gpu_available():
    """True when CuPy imports and sees at least one GPU."""
    try:
        get_device("cuda")
        return True
    except ValueError:
        return False


def available_devices():
    """Devices a test can run on here: cpu and emu always, cuda when a GPU is present."""
    return ["cpu", "emu"] + (["cuda"] if gpu_available() else [])
