"""The modified aligned Xception-65 backbone (paper Sec. 3.2, Fig. 4) as the official code builds
it: core/xception.py ``xception_65`` (ARCHITECTURE.md s. 7)."""
from .. import nn
from .backbone import Backbone, scaled


class XceptionBlock(nn.Module):
    """One unit of core/xception.py's ``xception_module``: three atrous separable convs, the stride
    on the last (the first two run at full resolution); shortcut "conv" (1x1 conv + BN), "sum"
    (identity) or "none". ``unit_rates``: the three convs' multi-grid factors.

    The ReLUs are where the released code has them, not where the paper's text (Sec. 3.2: "extra
    batch normalization and ReLU activation are added after each 3x3 depthwise convolution")
    puts them. ``preactivation=True`` (every unit but the last): each separable conv is ReLU,
    depthwise, BN, pointwise, BN; the shortcut takes the unit's input before any ReLU and the sum
    is not ReLU'd (the next unit's first ReLU is), so the residual branch can subtract from the
    trunk. ``preactivation=False`` (exit block 2): depthwise, BN, ReLU, pointwise, BN, ReLU."""

    def __init__(self, cin, depths, stride, shortcut, preactivation=True, unit_rates=(1, 1, 1),
                 rng=None):
        if len(unit_rates) != 3:
            raise ValueError(f"XceptionBlock: one unit rate per separable conv, got {unit_rates}")
        def sep(a, b, s):
            return nn.SeparableConv2d(a, b, stride=s, preactivation=preactivation, rng=rng)
        self.sep1 = sep(cin, depths[0], 1)
        self.sep2 = sep(depths[0], depths[1], 1)
        self.sep3 = sep(depths[1], depths[2], stride)
        self.shortcut = (nn.ConvBNReLU(cin, depths[2], 1, stride, relu=False, rng=rng)
                         if shortcut == "conv" else None)
        self.identity = shortcut == "sum"
        self.design_stride, self.unit_rates = stride, tuple(unit_rates)

    def configure(self, stride, rate):
        """Atrous form for set_output_stride: this unit's stride, ``rate`` x its unit rates."""
        for sep, unit_rate in zip((self.sep1, self.sep2, self.sep3), self.unit_rates):
            sep.depthwise.conv.dilation = rate * unit_rate
        self.sep3.depthwise.conv.stride = stride
        if self.shortcut is not None:
            self.shortcut.conv.stride = stride

    def forward(self, x, end_point=True):
        """-> (unit output, second separable conv's output: the official decoder end point
        ``separable_conv2_pointwise``, after its BN and before any ReLU; None without
        ``end_point``)."""
        # A BN output that only a ReLU reads goes with it (BatchNorm2d relu: one op on the kernel
        # devices): sep1's last BN with sep2's input ReLU (pre-activation) or its own (exit block
        # 2), and sep2's with sep3's input ReLU when no one takes sep2's output as the end point.
        fuse = not end_point
        inner = self.sep2(self.sep1(x, relu_out=True), relu_in=False,
                          relu_out=True if fuse else None)
        y = self.sep3(inner, relu_in=False if fuse else None)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.identity:
            y = y + x
        return y, None if fuse else inner


class Xception(Backbone):
    """Entry flow (stem conv 3x3/32 stride 2, conv 3x3/64, each + BN + ReLU; units of 128, 256,
    728 with stride 2), ``middle_blocks`` x 728, exit flow (728, 1024, 1024) stride 2 and
    (1536, 1536, 2048) with ``multi_grid`` as its unit rates. Its output is ReLU'd (exit block
    2's last ReLU). The decoder's low-level features are entry block 2's second separable conv
    (core/feature_extractor.py: ``entry_flow/block2/unit_1/xception_module/
    separable_conv2_pointwise``), stride 4, before its stride-2 third conv."""

    stem_stride = 2
    low_level_unit = 1

    def __init__(self, width=1.0, middle_blocks=16, multi_grid=(1, 1, 1), rng=None):
        c = lambda n: scaled(n, width)  # noqa: E731
        self.stem = nn.Sequential(nn.ConvBNReLU(3, c(32), 3, stride=2, rng=rng),
                                  nn.ConvBNReLU(c(32), c(64), 3, rng=rng))
        self.entry_flow = nn.Sequential(
            XceptionBlock(c(64), [c(128)] * 3, 2, "conv", rng=rng),
            XceptionBlock(c(128), [c(256)] * 3, 2, "conv", rng=rng),
            XceptionBlock(c(256), [c(728)] * 3, 2, "conv", rng=rng))
        self.middle_flow = nn.Sequential(*[XceptionBlock(c(728), [c(728)] * 3, 1, "sum", rng=rng)
                                           for _ in range(middle_blocks)])
        self.exit_flow = nn.Sequential(
            XceptionBlock(c(728), [c(728), c(1024), c(1024)], 2, "conv", rng=rng),
            XceptionBlock(c(1024), [c(1536), c(1536), c(2048)], 1, "none", preactivation=False,
                          unit_rates=multi_grid, rng=rng))
        self.low_level_channels, self.out_channels = c(256), c(2048)

    def units(self):
        """The units after the stem, in order (set_output_stride walks them)."""
        return [*self.entry_flow, *self.middle_flow, *self.exit_flow]
