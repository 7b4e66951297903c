"""DeepLabv3+ (paper Sec. 3, Fig. 2) and DeepLabv3 (``decoder=False``) on an Xception-65 or a
ResNet-101 backbone, with a switchable output stride (Sec. 3.1; ARCHITECTURE.md s. 7 and 9)."""
import inspect

import numpy as np

from .. import functional as F, nn
from .aspp import ASPP
from .decoder import Decoder
from .resnet import ResNet
from .xception import Xception

OUTPUT_STRIDES = (8, 16, 32)
ASPP_RATES_OS16 = (6, 12, 18)  # doubled at output stride 8, halved at 32


def apply_output_stride(units, output_stride, stem_stride):
    """TF-slim's ``stack_blocks_dense``: walk the units in order; once the stride reached so far
    equals ``output_stride``, every later unit keeps stride 1 and multiplies the atrous rate by
    the stride it gave up. Only strides and rates change, never a weight."""
    current, rate = stem_stride, 1
    for unit in units:
        if current == output_stride:
            unit.configure(1, rate)
            rate *= unit.design_stride
        else:
            unit.configure(unit.design_stride, rate)
            current *= unit.design_stride
    if current != output_stride:
        raise ValueError(f"output_stride {output_stride} not reachable: the backbone's strides "
                         f"multiply to {current}")


class DeepLab(nn.Module):
    """backbone -> ASPP -> (decoder) -> 1x1 logits conv -> bilinear upsampling to the input size.
    Built by ``deeplabv3plus``; ``config`` holds its arguments (JSON-able) to rebuild it."""

    def __init__(self, config, backbone, aspp, decoder, logits):
        self.config = config
        self.backbone, self.aspp, self.decoder, self.logits = backbone, aspp, decoder, logits

    def set_output_stride(self, output_stride):
        """Switch to output stride 8, 16 or 32 (e.g. train at 16, evaluate at 8): strides become
        atrous rates in the backbone, and the ASPP rates scale with 16 / output_stride."""
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        apply_output_stride(self.backbone.units(), output_stride, self.backbone.stem_stride)
        self.aspp.set_rates([r * 16 // output_stride for r in ASPP_RATES_OS16])
        self.config["output_stride"] = output_stride
        return self

    def forward(self, x):
        low_level, features = self.backbone(x)
        y = self.aspp(features)
        if self.decoder is not None:
            y = self.decoder(y, low_level)
        return F.resize_bilinear(self.logits(y), x.shape[2:], align_corners=True)


# Batch norm (eps, TensorFlow decay) per module, as the official arg scopes set them; our
# momentum is 1 - decay (nn.BatchNorm2d).
BATCH_NORM = {
    # core/feature_extractor.py extract_features -> xception.xception_arg_scope(...)
    "xception65": (1e-3, 0.9997),
    # core/feature_extractor.py extract_features -> resnet_v1_beta.resnet_arg_scope(...)
    "resnet101": (1e-5, 0.95),
    # model.py batch_norm_params in extract_features (ASPP) and refine_by_decoder (decoder)
    "aspp_decoder": (1e-5, 0.9997),
}


def set_batch_norm(module, eps, momentum):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = eps, momentum


def deeplabv3plus(backbone="xception65", num_classes=21, output_stride=16, decoder=True,
                  separable_aspp=True, multi_grid=(1, 1, 1), width=1.0, middle_blocks=16,
                  resnet_units=(3, 4, 23, 3), aspp_channels=256, low_level_channels=48,
                  dropout=0.1, bn_momentum=None, seed=0):
    """The paper's network as the official code builds it. ``backbone``: "xception65" or
    "resnet101"; ``decoder=False`` gives DeepLabv3. ``separable_aspp``: the paper's "SC" (Table
    5), atrous separable 3x3 convs in the ASPP *and* the decoder (the official default for both
    backbones; the paper's ResNet rows, Table 3, are dense). ``multi_grid``: unit rates of
    ResNet's block 4 (one per unit) or of Xception's exit block 2 (three); the official default
    (1, 1, 1), DeepLabv3's (1, 2, 4). ``width``, ``middle_blocks`` (Xception), ``resnet_units``,
    ``aspp_channels`` (also the decoder's 3x3 convs) and ``low_level_channels`` shrink the model
    for the CPU. ``bn_momentum``: None for each module's official decay (BATCH_NORM), or one
    momentum for every BN (short runs need ~0.01-0.1). ``seed`` fixes the He-normal weights."""
    config = model_config(**locals())
    rng = np.random.default_rng(seed)
    if backbone == "xception65":
        net = Xception(width, middle_blocks, tuple(multi_grid), rng=rng)
    elif backbone == "resnet101":
        net = ResNet(width, tuple(resnet_units), tuple(multi_grid), rng=rng)
    else:
        raise ValueError(f"backbone must be 'xception65' or 'resnet101', got {backbone!r}")
    aspp = ASPP(net.out_channels, aspp_channels, ASPP_RATES_OS16, separable_aspp, dropout, rng)
    dec = (Decoder(aspp_channels, net.low_level_channels, low_level_channels, aspp_channels,
                   separable_aspp, rng) if decoder else None)
    logits = nn.Conv2d(aspp_channels, num_classes, 1, bias=True, rng=rng)
    for module, key in ((net, backbone), (aspp, "aspp_decoder"), (dec, "aspp_decoder")):
        if module is not None:
            eps, decay = BATCH_NORM[key]
            set_batch_norm(module, eps, 1 - decay if bn_momentum is None else bn_momentum)
    return DeepLab(config, net, aspp, dec, logits).set_output_stride(output_stride)


def model_config(**kwargs):
    """``deeplabv3plus``'s arguments with its defaults filled in, as JSON keeps them: the one
    definition of a model's ``config`` (a checkpoint saves it; ``deeplabv3plus(**config)``
    rebuilds the model). TypeError on an argument ``deeplabv3plus`` does not take."""
    bound = inspect.signature(deeplabv3plus).bind(**kwargs)
    bound.apply_defaults()
    return dict(bound.arguments, resnet_units=list(bound.arguments["resnet_units"]),
                multi_grid=list(bound.arguments["multi_grid"]))
