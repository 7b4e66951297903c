"""minideeplab: DeepLabv3+ (Chen et al., ECCV 2018) from scratch on NumPy and CuPy."""
from .config import no_grad  # noqa: F401
from .device import get_device, available_devices  # noqa: F401
from .tensor import Tensor  # noqa: F401
from .function import Function  # noqa: F401
from . import functional, gradcheck  # noqa: F401
# Not ``data`` (Pillow) or ``visualize`` (matplotlib): ``import minideeplab.data`` where needed.
from . import nn, models, flops, optim, metrics  # noqa: F401,E402
