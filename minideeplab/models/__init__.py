"""The paper's networks: ``deeplabv3plus(backbone="xception65" | "resnet101", ...)``."""
from .deeplab import DeepLab, deeplabv3plus  # noqa: F401
from .xception import Xception  # noqa: F401
from .resnet import ResNet  # noqa: F401
