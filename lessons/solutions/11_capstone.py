"""Reference solution of lesson 11's exercise (graded by checks.check_deeplabv3plus_forward)."""
import minideeplab.functional as F


def deeplabv3plus_forward(net, x):
    # Encoder: the backbone gives the low-level end point (stride 4, for the decoder) and the
    # final features (the output stride).
    low_level, features = net.backbone(x)
    # ASPP: image pooling (one vector per image, back to the map's size), the 1x1 conv and the
    # atrous convs, concatenated in the official order, projected, dropout.
    aspp = net.aspp
    pooled = aspp.image_pooling(F.global_avg_pool(features))
    branches = [F.resize_bilinear(pooled, features.shape[2:], align_corners=True),
                aspp.conv1x1(features), *(branch(features) for branch in aspp.atrous)]
    y = aspp.dropout(aspp.project(F.concat(branches, axis=1)))
    # Decoder: few channels for the low-level features, the encoder output upsampled to their
    # size and put first, two 3x3 convs.
    decoder = net.decoder
    low_level = decoder.low_level(low_level)
    y = F.resize_bilinear(y, low_level.shape[2:], align_corners=True)
    y = F.concat([y, low_level], axis=1)
    for conv in decoder.refine:
        y = conv(y)
    # The logits at stride 4, upsampled bilinearly to the input size.
    return F.resize_bilinear(net.logits(y), x.shape[2:], align_corners=True)
