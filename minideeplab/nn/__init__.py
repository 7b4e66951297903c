"""Modules, parameters and the layers of the paper's networks (ARCHITECTURE.md s. 1)."""
from .module import Module, Parameter, Sequential  # noqa: F401
from .layers import (Conv2d, BatchNorm2d, ReLU, Dropout, ConvBNReLU, SeparableConv2d,  # noqa: F401
                     MaxPool2d, max_pool2d, he_normal)
