"""ResNet-101 backbone as the official DeepLab code builds it (paper Sec. 4.2, Table 3):
core/resnet_v1_beta.py ``resnet_v1_101_beta``, TF-slim's ResNet v1 "beta" variant.
ARCHITECTURE.md s. 7."""

from .. import functional as F, nn
from .backbone import Backbone, scaled


class Bottleneck(nn.Module):
    """ResNet v1 bottleneck (He et al. 2016), TF-slim form: 1x1 -> 3x3 (the stride and the
    atrous rate) -> 1x1 + BN without ReLU, added to a shortcut (1x1 conv + BN where the depth
    changes, else the strided identity), then ReLU. ``unit_rate``: the multi-grid factor."""

    def __init__(self, cin, depth, bottleneck, stride, unit_rate=1, rng=None):
        self.conv1 = nn.ConvBNReLU(cin, bottleneck, 1, rng=rng)
        self.conv2 = nn.ConvBNReLU(bottleneck, bottleneck, 3, stride, rng=rng)
        self.conv3 = nn.ConvBNReLU(bottleneck, depth, 1, relu=False, rng=rng)
        self.shortcut = (nn.ConvBNReLU(cin, depth, 1, stride, relu=False, rng=rng)
                         if cin != depth else None)
        self.design_stride, self.unit_rate = stride, unit_rate

    def configure(self, stride, rate):
        """Atrous form for set_output_stride: this unit's stride, and rate x multi-grid."""
        self.conv2.conv.stride, self.conv2.conv.dilation = stride, rate * self.unit_rate
        if self.shortcut is not None:
            self.shortcut.conv.stride = stride

    def forward(self, x, end_point=True):
        """-> (unit output, the residual branch after conv3's BN, before the sum and the ReLU:
        the official decoder end point ``bottleneck_v1/conv3``; None without ``end_point``)."""
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        else:
            s = self.conv2.conv.stride
            shortcut = x[:, :, ::s, ::s] if s > 1 else x
        residual = self.conv3(self.conv2(self.conv1(x)))
        return F.relu(residual + shortcut), residual if end_point else None


class ResNet(Backbone):
    """Stem of three 3x3 convs (64, 64, 128; the first stride 2) + 3x3 max pool stride 2, then
    four blocks of ``units`` bottlenecks (depths 256, 512, 1024, 2048), the stride 2 of blocks 1-3
    on their *last* unit (TF-slim), ``multi_grid`` the unit rates of block 4 (one per unit). The
    decoder's low-level features are the residual branch of the unit before block 1's strided
    last one (core/feature_extractor.py: ``block1/unit_2/bottleneck_v1/conv3`` of 3 units)."""

    stem_stride = 4

    def __init__(self, width=1.0, units=(3, 4, 23, 3), multi_grid=(1, 1, 1), rng=None):
        if units[0] < 2 or len(multi_grid) != units[3]:
            raise ValueError(f"ResNet: units={units} needs >= 2 units in block 1 (the low-level "
                             f"features precede its strided last unit) and one multi_grid factor "
                             f"per block-4 unit, got multi_grid={multi_grid}")
        c = lambda n: scaled(n, width)  # noqa: E731
        self.stem = nn.Sequential(nn.ConvBNReLU(3, c(64), 3, stride=2, rng=rng),
                                  nn.ConvBNReLU(c(64), c(64), 3, rng=rng),
                                  nn.ConvBNReLU(c(64), c(128), 3, rng=rng),
                                  nn.MaxPool2d(3, 2))
        cin, blocks = c(128), []
        for b, n in enumerate(units):
            depth, stride = c(256 << b), 2 if b < 3 else 1
            for i in range(n):
                blocks.append(Bottleneck(cin, depth, depth // 4, stride if i == n - 1 else 1,
                                         multi_grid[i] if b == 3 else 1, rng))
                cin = depth
        self.blocks = nn.Sequential(*blocks)
        self.low_level_unit = units[0] - 2
        self.low_level_channels, self.out_channels = c(256), c(2048)

    def units(self):
        return list(self.blocks)
