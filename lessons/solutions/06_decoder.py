"""Reference solution of lesson 6's exercise (graded by checks.check_decoder)."""
import minideeplab.functional as F


def decoder_forward(features, low_level, w_reduce, w_refine1, w_refine2, w_logits, out_size):
    # Few channels for the low-level features (48 of 256 + 48 in DeepLab), so that they refine
    # the encoder's prediction instead of outweighing it (paper Sec. 3.1).
    low_level = F.relu(F.conv2d(low_level, w_reduce))
    features = F.resize_bilinear(features, low_level.shape[2:], align_corners=True)
    # model.py refine_by_decoder: the encoder features first, then the low-level ones.
    y = F.concat([features, low_level], axis=1)
    y = F.relu(F.atrous_conv2d(y, w_refine1))  # 3x3, "same" size
    y = F.relu(F.atrous_conv2d(y, w_refine2))
    return F.resize_bilinear(F.conv2d(y, w_logits), out_size, align_corners=True)
