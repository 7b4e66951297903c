"""minideeplab: DeepLabv3+ (Chen et al., ECCV 2018) from scratch on NumPy and CuPy.

Not imported here: ``data`` (it needs Pillow) and ``visualize`` (matplotlib); import
``minideeplab.data`` where it is used."""
from . import flops, functional, gradcheck, metrics, models, nn, optim
from .config import no_grad
from .device import available_devices, get_device
from .function import Function
from .tensor import Tensor

__all__ = ["Function", "Tensor", "available_devices", "flops", "functional", "get_device",
           "gradcheck", "metrics", "models", "nn", "no_grad", "optim"]
