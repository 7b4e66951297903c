"""The DeepLabv3+ decoder (paper Sec. 3.1, Fig. 2; Tables 1-2; ARCHITECTURE.md s. 7)."""
from .. import functional as F, nn
from .aspp import conv3x3


class Decoder(nn.Module):
    """model.py ``refine_by_decoder``: the backbone's low-level end point (stride 4, taken before
    any ReLU) -> 1x1 conv to ``low_level_channels`` (48) + BN + ReLU (``feature_projection0``);
    the encoder output upsampled bilinearly to their size, concatenated in front of them; two 3x3
    convs of ``channels``, separable or dense, + BN + ReLU (``decoder_conv0``, ``decoder_conv1``).
    The logits conv follows in DeepLab."""

    def __init__(self, cin, low_level_cin, low_level_channels=48, channels=256, separable=True,
                 rng=None):
        self.low_level = nn.ConvBNReLU(low_level_cin, low_level_channels, 1, rng=rng)
        self.refine = nn.Sequential(
            conv3x3(cin + low_level_channels, channels, separable, rng=rng),
            conv3x3(channels, channels, separable, rng=rng))

    def forward(self, features, low_level):
        low_level = self.low_level(low_level)
        features = F.resize_bilinear(features, low_level.shape[2:], align_corners=True)
        return self.refine(F.concat([features, low_level], axis=1))
