"""Atrous Spatial Pyramid Pooling (paper Sec. 3.1, from DeepLabv3) as the official model.py's
``extract_features`` builds it (ARCHITECTURE.md s. 7)."""
from .. import functional as F, nn


def conv3x3(cin, cout, separable, rate=1, rng=None):
    """3x3 conv + BN + ReLU: atrous separable (the paper's "SC"; model.py
    ``split_separable_conv2d``) or dense."""
    if separable:
        return nn.SeparableConv2d(cin, cout, 3, dilation=rate, rng=rng)
    return nn.ConvBNReLU(cin, cout, 3, dilation=rate, rng=rng)


def _atrous_conv(branch):
    """The conv whose rate set_rates changes: the depthwise one of a separable branch."""
    return branch.depthwise.conv if isinstance(branch, nn.SeparableConv2d) else branch.conv


class ASPP(nn.Module):
    """Image pooling, a 1x1 conv and three 3x3 atrous convs at ``rates``, each ``channels`` wide
    with BN + ReLU, concatenated in that order (the official ``image_pooling``, ``aspp0``,
    ``aspp1-3``), projected by a 1x1 conv + BN + ReLU (``concat_projection``), then dropout.

    Image pooling: the official code averages over a window derived from the crop size
    (``scale_dimension(crop_size, 1 / output_stride)``, VALID, stride 1) and resizes back to the
    crop's feature size; without a crop size it takes the global mean. Training feeds crops,
    evaluation pads every image to the crop size, and multi-scale inference scales the crop size
    with the image, so the window always covers the whole feature map. We implement that case,
    a global average pool (1x1 conv, BN, ReLU, bilinear upsampling back), which needs no crop
    size; it differs only under ``image_pooling_crop_size``, which we do not offer."""

    def __init__(self, cin, channels=256, rates=(6, 12, 18), separable=True, dropout=0.1,
                 rng=None):
        self.image_pooling = nn.ConvBNReLU(cin, channels, 1, rng=rng)
        self.conv1x1 = nn.ConvBNReLU(cin, channels, 1, rng=rng)
        self.atrous = nn.Sequential(*[conv3x3(cin, channels, separable, r, rng) for r in rates])
        self.project = nn.ConvBNReLU((len(rates) + 2) * channels, channels, 1, rng=rng)
        self.dropout = nn.Dropout(dropout)

    def set_rates(self, rates):
        for branch, rate in zip(self.atrous, rates, strict=True):
            _atrous_conv(branch).dilation = rate

    def forward(self, x):
        pooled = self.image_pooling(F.global_avg_pool(x))
        branches = [F.resize_bilinear(pooled, x.shape[2:], align_corners=True), self.conv1x1(x),
                    *(branch(x) for branch in self.atrous)]
        return self.dropout(self.project(F.concat(branches, axis=1)))
