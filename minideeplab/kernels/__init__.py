"""Hand-written CUDA kernels (``*.cu``), shared by the ``cuda`` and ``emu`` devices."""

MAX_GRID = 4096  # grid-stride loops cover larger sizes; keeps the emulator's block count bounded


def grid_1d(n, block=256):
    """Blocks for a 1-D grid-stride loop over ``n`` elements."""
    return (max(1, min((int(n) + block - 1) // block, MAX_GRID)),)
