"""Hand-written CUDA kernels (``*.cu``), shared by the ``cuda`` and ``emu`` devices.

Every launch goes through ``launch``: ``BLOCK`` threads a block, a grid-stride grid over ``n``
elements (``grid_1d``) or an explicit grid (one block per channel, say). Each ``.cu`` file is
compiled with ``-DBLOCK=<BLOCK>`` and the other ``MACROS``, so a kernel's shared arrays, the
launch and the host's tiling agree by construction (ARCHITECTURE.md s. 5). A launch over no
elements (``n == 0``) or no blocks (a grid with a 0) is skipped here, for every op: it has
nothing to compute, and CUDA refuses a grid of 0 blocks.
"""

BLOCK = 256  # threads per block of every launch: a power of two, for the tree reductions
# The tiled kernels' shapes and shared-memory sizes, in reals: the host picks tiles and bands that
# fit them, the kernels size their shared arrays by them.
DW_TW = 32  # depthwise tile columns: one warp spans a tile row, so its loads coalesce
DW_RMAX = 4  # depthwise outputs per thread at most (1, 2 or 4)
DW_HALO = 16 * BLOCK  # depthwise window and weights: 16 KiB in float, 32 KiB in double
RS_CAP = 20 * BLOCK  # resize's source rows of a band: 20 KiB in float, 40 KiB in double
MACROS = dict(BLOCK=BLOCK, DW_TW=DW_TW, DW_RMAX=DW_RMAX, DW_HALO=DW_HALO, RS_CAP=RS_CAP)
MAX_GRID = 4096  # grid-stride loops cover larger sizes; keeps the emulator's block count bounded


def full_checks():
    """True where every launch checks all its arguments, not once per (kernel, grid, argument
    shapes, dtypes, strides, values), and device values (labels) are checked at a sync: the
    tests' checking mode, ``MINIDEEPLAB_EMU_CHECK=1`` or ``emu.runner.check_mode()``."""
    from ..emu.runner import checking
    return checking()


def grid_1d(n):
    """Blocks for a 1-D grid-stride loop over ``n`` elements."""
    return (max(1, min((int(n) + BLOCK - 1) // BLOCK, MAX_GRID)),)


def launch(dev, family, kernel, args, n=None, grid=None):
    """Run ``kernel`` of ``kernels/<family>.cu`` (or a ``.cu`` path) on ``dev`` with ``args``.

    The grid is ``grid_1d(n)`` for a grid-stride loop over ``n`` elements, or ``grid`` blocks;
    every block has ``BLOCK`` threads. The real type is the dtype of the first floating-point
    array in ``args``. Arrays the kernel only reads (``const real*``) are made C-contiguous here
    (a copy only if strided); arrays it writes must be C-contiguous already (the loader says so),
    since a copy would be written instead of the caller's array. Nothing runs when ``n`` is 0 or
    ``grid`` has a 0 (an empty batch, no channels): the outputs are then empty, or filled by the
    caller.
    """
    if (n is None) == (grid is None):
        raise ValueError(f"launch of {kernel}: give exactly one of n (elements) and grid (blocks)")
    if n == 0 or (grid is not None and 0 in ((grid,) if isinstance(grid, int) else grid)):
        return
    xp = dev.xp
    dtype = next(a.dtype for a in args if isinstance(a, xp.ndarray) and a.dtype.kind == "f")
    module = dev.module(family, dtype)
    params = module.kernel(kernel).params
    args = [xp.ascontiguousarray(a) if p.pointer and p.const and isinstance(a, xp.ndarray) else a
            for p, a in zip(params, args)]
    dev.launch(module, kernel, grid_1d(n) if grid is None else grid, BLOCK, args)
