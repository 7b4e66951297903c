"""What DeepLab needs of a backbone (ARCHITECTURE.md s. 7): a stem, then units that each return
(output, the end point the decoder may take), walked in order by ``set_output_stride``."""
from .. import nn


def scaled(channels, width):
    """``channels`` times the width multiplier (the small CPU variants), at least 1."""
    return max(1, int(round(channels * width)))


class Backbone(nn.Module):
    """``stem``, ``units()`` (each ``unit(x, end_point)`` -> (output, its end point or None
    without ``end_point``); ``low_level_unit``: the unit whose end point is the decoder's
    stride-4 input; ``low_level_channels``, ``out_channels``, ``stem_stride``. ``forward``
    returns (low-level features, final features)."""

    def units(self):
        raise NotImplementedError(f"{type(self).__name__}.units is abstract")

    def forward(self, x):
        x = self.stem(x)
        for i, unit in enumerate(self.units()):
            # Only the low-level unit's end point is wanted: the others may fuse past it.
            x, end_point = unit(x, end_point=i == self.low_level_unit)
            if end_point is not None:
                low_level = end_point
        return low_level, x
