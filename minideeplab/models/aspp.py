"""Atrous Spatial Pyramid Pooling (paper Sec. 3.1, from DeepLabv3; ARCHITECTURE.md s. 7)."""
from .. import functional as F, nn


def conv3x3(cin, cout, separable, rate=1, rng=None):
    """3x3 conv + BN + ReLU: atrous separable (the paper's "SC") or dense."""
    if separable:
        return nn.SeparableConv2d(cin, cout, 3, dilation=rate, rng=rng)
    return nn.ConvBNReLU(cin, cout, 3, dilation=rate, rng=rng)


def _atrous_conv(branch):
    """The conv whose rate set_rates changes: the depthwise one of a separable branch."""
    return branch.depthwise.conv if isinstance(branch, nn.SeparableConv2d) else branch.conv


class ASPP(nn.Module):
    """1x1 conv; three 3x3 atrous convs at ``rates``; image pooling (global average pool, 1x1 conv,
    BN, ReLU, bilinear upsampling back); every branch ``channels`` wide with BN + ReLU. The five
    are concatenated and projected by a 1x1 conv + BN + ReLU, then dropout."""

    def __init__(self, cin, channels=256, rates=(6, 12, 18), separable=False, dropout=0.1,
                 rng=None):
        self.conv1x1 = nn.ConvBNReLU(cin, channels, 1, rng=rng)
        self.atrous = nn.Sequential(*[conv3x3(cin, channels, separable, r, rng) for r in rates])
        self.image_pooling = nn.ConvBNReLU(cin, channels, 1, rng=rng)
        self.project = nn.ConvBNReLU((len(rates) + 2) * channels, channels, 1, rng=rng)
        self.dropout = nn.Dropout(dropout)

    def set_rates(self, rates):
        for branch, rate in zip(self.atrous, rates, strict=True):
            _atrous_conv(branch).dilation = rate

    def forward(self, x):
        pooled = self.image_pooling(F.global_avg_pool(x))
        branches = [self.conv1x1(x), *(branch(x) for branch in self.atrous),
                    F.resize_bilinear(pooled, x.shape[2:], align_corners=True)]
        return self.dropout(self.project(F.concat(branches, axis=1)))
