"""Differentiable ops (ARCHITECTURE.md section 9): ``import minideeplab.functional as F``."""
from .basic import (add, sub, mul, div, neg, pow, exp, log, matmul, reshape, transpose,  # noqa: F401
                    broadcast_to, sum, mean, getitem, concat, sum_to)
from .activation import relu  # noqa: F401
from .conv import (conv2d, atrous_conv2d, depthwise_conv2d, pointwise_conv2d,  # noqa: F401
                   separable_conv2d, conv_output_size)
from .activation import dropout, seed  # noqa: F401
from .norm import batch_norm  # noqa: F401
from .resize import resize_bilinear, global_avg_pool  # noqa: F401
from .loss import softmax_cross_entropy  # noqa: F401
