"""The modified aligned Xception-65 backbone (paper Sec. 3.2, Fig. 4; ARCHITECTURE.md s. 7)."""
from .. import nn


def scaled(channels, width):
    """``channels`` times the width multiplier (the small CPU variants), at least 1."""
    return max(1, int(round(channels * width)))


class XceptionBlock(nn.Module):
    """Three atrous separable convs, the stride on the last (so the block's first two convs run at
    full resolution); shortcut "conv" (1x1 conv + BN), "sum" (identity) or "none"."""

    def __init__(self, cin, depths, stride, shortcut, rng=None):
        self.sep1 = nn.SeparableConv2d(cin, depths[0], rng=rng)
        self.sep2 = nn.SeparableConv2d(depths[0], depths[1], rng=rng)
        self.sep3 = nn.SeparableConv2d(depths[1], depths[2], stride=stride, rng=rng)
        self.shortcut = (nn.ConvBNReLU(cin, depths[2], 1, stride, relu=False, rng=rng)
                         if shortcut == "conv" else None)
        self.identity = shortcut == "sum"
        self.design_stride = stride

    def configure(self, stride, rate):
        """Atrous form for set_output_stride: this block's stride, and ``rate`` in every conv."""
        for sep in (self.sep1, self.sep2, self.sep3):
            sep.depthwise.conv.dilation = rate
        self.sep3.depthwise.conv.stride = stride
        if self.shortcut is not None:
            self.shortcut.conv.stride = stride

    def forward(self, x):
        """-> (block output, output of the second separable conv: the decoder's low-level input)."""
        inner = self.sep2(self.sep1(x))
        y = self.sep3(inner)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.identity:
            y = y + x
        return y, inner


class Xception(nn.Module):
    """Entry flow (stem conv 3x3/32 stride 2, conv 3x3/64; blocks of 128, 256, 728 with stride 2),
    ``middle_blocks`` x 728, exit flow (728, 1024, 1024) stride 2 and (1536, 1536, 2048).
    ``forward`` returns (stride-4 low-level features, final features)."""

    stem_stride = 2

    def __init__(self, width=1.0, middle_blocks=16, rng=None):
        c = lambda n: scaled(n, width)  # noqa: E731
        self.stem = nn.Sequential(nn.ConvBNReLU(3, c(32), 3, stride=2, rng=rng),
                                  nn.ConvBNReLU(c(32), c(64), 3, rng=rng))
        self.entry_flow = nn.Sequential(
            XceptionBlock(c(64), [c(128)] * 3, 2, "conv", rng),
            XceptionBlock(c(128), [c(256)] * 3, 2, "conv", rng),
            XceptionBlock(c(256), [c(728)] * 3, 2, "conv", rng))
        self.middle_flow = nn.Sequential(*[XceptionBlock(c(728), [c(728)] * 3, 1, "sum", rng)
                                           for _ in range(middle_blocks)])
        self.exit_flow = nn.Sequential(
            XceptionBlock(c(728), [c(728), c(1024), c(1024)], 2, "conv", rng),
            XceptionBlock(c(1024), [c(1536), c(1536), c(2048)], 1, "none", rng))
        self.low_level_channels, self.out_channels = c(256), c(2048)

    def units(self):
        """The blocks after the stem, in order (set_output_stride walks them)."""
        return [*self.entry_flow, *self.middle_flow, *self.exit_flow]

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.units()):
            x, inner = block(x)
            if i == 1:  # entry block 2: its second conv is at stride 4, before the striding one
                low_level = inner
        return low_level, x
