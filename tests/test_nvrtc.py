"""Every kernel compiles with NVRTC (pip nvidia-cuda-nvrtc, no GPU) for float and double, for the
H100 and an older architecture, without a warning (ARCHITECTURE.md s. 5)."""
from pathlib import Path

import pytest

from minideeplab.kernels import loader

try:
    from cupy.cuda import nvrtc
    nvrtc.getVersion()
except Exception as e:  # ImportError, or the library missing at run time
    pytest.skip(f"NVRTC (CuPy and nvidia-cuda-nvrtc) not usable: {e}", allow_module_level=True)
SOURCES = sorted(Path(loader.KERNEL_DIR).glob("*.cu"))


def test_there_are_kernels():
    assert {"activation", "reduce"} <= {p.stem for p in SOURCES}


@pytest.mark.parametrize("arch", ["compute_90", "compute_75"])
@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_compiles_without_warnings(source, real, arch):
    log = loader.compile_check(source, real, arch)
    assert not log.strip(), f"{source.name} (real={real}, {arch}) compiles with warnings:\n{log}"
