"""The same DeepLabv3+ in PyTorch, built from one of our models with its weights copied, for
benchmarks/train_step.py (imports torch, which minideeplab itself never does).

A mirror of minideeplab/models, module for module: the stem's conv + BN + ReLU units, Xception
units of three separable convs (pre-activation ReLU + depthwise + BN + pointwise + BN, or in exit
block 2 depthwise + BN + ReLU + pointwise + BN + ReLU; the stride on the last one, a 1x1 conv + BN
shortcut or the identity), ASPP (image pooling, 1x1, atrous) with dropout, the decoder and the
logits conv; the same strides, rates and "same" padding as the model is currently
set to (set_output_stride), the same BN momentum and eps; parameters in the same order.
"""
import numpy as np
import torch
from torch import nn

from minideeplab import nn as mnn
from minideeplab.device import get_device


def _tensor(a):
    return torch.from_numpy(np.array(get_device("cpu").asarray(a)))


def conv(m):
    k = m.weight.shape[-1]
    pad = m.dilation * (k - 1) // 2 if m.padding == "same" else m.padding
    c = nn.Conv2d(m.weight.shape[1] * m.groups, m.weight.shape[0], k, m.stride, pad, m.dilation,
                  m.groups, bias=m.bias is not None)
    with torch.no_grad():
        c.weight.copy_(_tensor(m.weight.data))
        if m.bias is not None:
            c.bias.copy_(_tensor(m.bias.data))
    return c


def batch_norm(m):
    b = nn.BatchNorm2d(m.gamma.shape[0], eps=m.eps, momentum=m.momentum)
    with torch.no_grad():
        for dst, src in ((b.weight, m.gamma.data), (b.bias, m.beta.data),
                         (b.running_mean, m.running_mean), (b.running_var, m.running_var)):
            dst.copy_(_tensor(src))
    return b


def unit(m):
    """ConvBNReLU or SeparableConv2d as an nn.Sequential."""
    if isinstance(m, mnn.SeparableConv2d):
        return nn.Sequential(*([nn.ReLU()] if m.preactivation else []), unit(m.depthwise),
                             unit(m.pointwise))
    return nn.Sequential(conv(m.conv), batch_norm(m.bn), *([nn.ReLU()] if m.relu else []))


class XceptionBlock(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.sep1, self.sep2, self.sep3 = unit(m.sep1), unit(m.sep2), unit(m.sep3)
        self.shortcut = unit(m.shortcut) if m.shortcut is not None else None
        self.identity = m.identity

    def forward(self, x):
        inner = self.sep2(self.sep1(x))
        y = self.sep3(inner)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        elif self.identity:
            y = y + x
        return y, inner


class Xception(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.stem = nn.Sequential(*(unit(u) for u in m.stem))
        self.units = nn.ModuleList(XceptionBlock(u) for u in m.units())
        self.low_level_unit = m.low_level_unit

    def forward(self, x):
        x = self.stem(x)
        for i, block in enumerate(self.units):
            x, inner = block(x)
            if i == self.low_level_unit:  # as ours: the decoder's stride-4 features
                low_level = inner
        return low_level, x


def _upsample(x, size):
    return nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ASPP(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.image_pooling = unit(m.image_pooling)
        self.conv1x1 = unit(m.conv1x1)
        self.atrous = nn.ModuleList(unit(b) for b in m.atrous)
        self.project, self.dropout = unit(m.project), nn.Dropout(m.dropout.p)

    def forward(self, x):
        pooled = self.image_pooling(nn.functional.adaptive_avg_pool2d(x, 1))
        branches = [_upsample(pooled, x.shape[2:]), self.conv1x1(x), *(b(x) for b in self.atrous)]
        return self.dropout(self.project(torch.cat(branches, 1)))


class Decoder(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.low_level = unit(m.low_level)
        self.refine = nn.Sequential(*(unit(u) for u in m.refine))

    def forward(self, features, low_level):
        low_level = self.low_level(low_level)
        return self.refine(torch.cat([_upsample(features, low_level.shape[2:]), low_level], 1))


class DeepLab(nn.Module):
    def __init__(self, m):
        super().__init__()
        if m.config["backbone"] != "xception65":
            raise ValueError("the PyTorch mirror builds the Xception-65 DeepLab only")
        self.backbone, self.aspp = Xception(m.backbone), ASPP(m.aspp)
        self.decoder = Decoder(m.decoder) if m.decoder is not None else None
        self.logits = conv(m.logits)

    def forward(self, x):
        low_level, features = self.backbone(x)
        y = self.aspp(features)
        if self.decoder is not None:
            y = self.decoder(y, low_level)
        return _upsample(self.logits(y), x.shape[2:])


def sgd(model, lr, momentum, weight_decay):
    """torch.optim.SGD as our optim.SGD with experiment.no_weight_decay: weight decay on the
    weights of the convolutions that are not depthwise, none on depthwise weights, BN, biases."""
    decayed = {id(m.weight) for m in model.modules()
               if isinstance(m, nn.Conv2d) and m.groups == 1}
    params = list(model.parameters())
    return torch.optim.SGD([dict(params=[p for p in params if id(p) in decayed]),
                            dict(params=[p for p in params if id(p) not in decayed],
                                 weight_decay=0.0)],
                           lr=lr, momentum=momentum, weight_decay=weight_decay)
