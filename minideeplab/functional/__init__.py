"""Differentiable ops (DESIGN.md section 8): ``import minideeplab.functional as F``."""
from .basic import (add, sub, mul, div, neg, pow, exp, log, matmul, reshape, transpose,  # noqa: F401
                    broadcast_to, sum, mean, getitem, concat, sum_to)
from .activation import relu  # noqa: F401
