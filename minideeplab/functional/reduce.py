"""Per-channel sums over N, H and W: the reduction behind BatchNorm's statistics
(ARCHITECTURE.md s. 5)."""
from ..device import get_device
from ..function import Op
from ..kernels import launch


class ChannelSum(Op):
    """``x.sum(axis=(0, 2, 3))``; the kernel runs one block per channel (deterministic)."""

    name, reals = "channel_sum", ("x",)

    def check(self, x):
        if x.ndim != 4:
            raise ValueError(f"channel_sum takes an NCHW array, got shape {x.shape}")

    def forward_cpu(self, x):
        return x.sum(axis=(0, 2, 3))

    def forward_kernel(self, x):
        N, C, H, W = x.shape
        out = self.dev.xp.empty(C, dtype=x.dtype)
        launch(self.dev, "reduce", "channel_sum", (x, out, N, C, H * W), grid=C)
        return out


def channel_sum(x, device):
    """``x.sum(axis=(0, 2, 3))`` of an NCHW array on ``device``: NumPy on ``cpu``, the
    ``channel_sum`` kernel (one block per channel, deterministic) on ``cuda`` and ``emu``."""
    return ChannelSum().run(get_device(device), x)
