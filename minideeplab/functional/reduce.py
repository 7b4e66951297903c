"""Per-channel sums over N, H and W: the reduction behind BatchNorm's statistics (ARCHITECTURE.md s. 5)."""
from ..device import get_device

CHANNEL_SUM_BLOCK = 256  # threads per block = the shared array of kernels/reduce.cu


def channel_sum(x, device):
    """``x.sum(axis=(0, 2, 3))`` of an NCHW array on ``device``: NumPy on ``cpu``, the
    ``channel_sum`` kernel (one block per channel, deterministic) on ``cuda`` and ``emu``."""
    dev = get_device(device)
    if x.ndim != 4:
        raise ValueError(f"channel_sum takes an NCHW array, got shape {x.shape}")
    if not dev.uses_kernels:
        return x.sum(axis=(0, 2, 3))
    x = dev.xp.ascontiguousarray(x)
    N, C, H, W = x.shape
    out = dev.xp.empty(C, dtype=x.dtype)
    if C:
        dev.launch(dev.module("reduce", x.dtype), "channel_sum", C, CHANNEL_SUM_BLOCK,
                   (x, out, N, C, H * W))
    return out
