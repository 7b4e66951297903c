"""The three devices (ARCHITECTURE.md section 2): ``cpu``, ``cuda`` and ``emu``.

An op asks its device for ``dev.xp`` (numpy or cupy) and, on the kernel path, for
``dev.module(family, dtype)`` and ``dev.launch(module, kernel, grid, block, args)``. ``cuda`` and
``emu`` share that path (``KernelDevice``) and differ only in how a ``.cu`` source is built and
how its module calls a kernel, so a test on ``emu`` runs the same source and the same launch code
as the GPU.
"""
import numpy as np

from .kernels import loader


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


class KernelDevice(Device):
    """A device that runs the hand-written kernels: one module cache (``loader.load_module``) and
    one launch for both; a subclass says how a ``.cu`` source is built (``build``)."""

    uses_kernels = True
    watch_sources = False  # True: a module is rebuilt when its .cu file or a header changes

    def module(self, family, dtype):
        return loader.load_module(self, family, dtype)

    def launch(self, module, kernel, grid, block, args):
        module.launch(kernel, _dim3(grid), _dim3(block), args)

    def build(self, source):
        """``source`` (a ``loader.Source``) compiled for this device: a ``loader.Module``."""
        raise NotImplementedError(f"{type(self).__name__}.build is abstract")

    def build_target(self):
        """What a built module serves besides its source and dtype: this device."""
        return self.name


class CUDA(KernelDevice):
    """CuPy arrays; kernels through ``cupy.RawModule``; GEMMs through cuBLAS."""

    name = "cuda"

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

    def build(self, source):
        return loader.nvrtc_module(source)

    def build_target(self):
        """The current GPU: a module is loaded into one GPU's context."""
        return self.name, self._cp.cuda.runtime.getDevice()


class Emu(KernelDevice):
    """NumPy arrays; kernels compiled from the same ``.cu`` source for the host (``emu/``)."""

    name = "emu"
    # The lessons and tests write .cu files and load them again after an edit; a stat per file
    # at each lookup is small beside an emulated launch (and is left out on cuda, where the step's
    # host time is the bottleneck).
    watch_sources = True

    def build(self, source):
        from .emu.runner import build
        return build(source)


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
