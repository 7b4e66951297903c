"""Reference solution of lesson 10's exercise (graded by checks.check_tile_width)."""
import minideeplab.functional.conv as conv
from minideeplab import kernels


def with_tile_width(tw, run):
    # The host picks rows, grids and partial sums with conv's constants; the kernels get theirs
    # from kernels.MACROS when a module is built: both must change, and both must come back.
    saved = kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY
    kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = tw, tw, kernels.BLOCK // tw
    try:
        return run()
    finally:
        kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = saved
