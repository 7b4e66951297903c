"""The lessons' exercise graders (lessons/checks.py), each run three ways without executing the
notebooks: on the stub as shipped in the notebook ("not done yet"), on the reference solution in
lessons/solutions/ (passes) and on deliberately wrong solutions (fails, saying what is wrong): a
check that cannot fail is a defect. tests/test_lessons.py runs the notebooks themselves."""
import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

import minideeplab as mdl
import minideeplab.functional as F
import minideeplab.functional.conv as conv
from minideeplab import kernels

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
sys.path.insert(0, str(LESSONS))
import checks  # noqa: E402  (lessons/checks.py, which the notebooks import from their folder)


def stub(lesson, name):
    """``name`` as the notebook ships it: the source of its cell tagged ``exercise-stub``."""
    nb = nbformat.read(LESSONS / f"{lesson}.ipynb", as_version=4)
    scope = {"np": np, "mdl": mdl, "F": F}
    for cell in nb.cells:
        if "exercise-stub" in cell.metadata.get("tags", []) and name in cell.source:
            exec(cell.source, scope)
            return scope[name]
    raise LookupError(f"{lesson}.ipynb has no exercise-stub cell defining {name}")


def solution(lesson, name):
    spec = importlib.util.spec_from_file_location(f"solution_{lesson}",
                                                  LESSONS / "solutions" / f"{lesson}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


class SigmoidWrongSign(mdl.Function):
    def forward(self, x):
        self.y = 1 / (1 + np.exp(-x))
        return self.y

    def backward(self, gy):
        return -gy * self.y * (1 - self.y)


class SigmoidSummed(SigmoidWrongSign):  # reduces the gradient to a scalar
    def backward(self, gy):
        return (gy * self.y * (1 - self.y)).sum()


class SigmoidForgetsChainRule(SigmoidWrongSign):  # dy/dx without gy
    def backward(self, gy):
        return self.y * (1 - self.y)


def im2col_ignoring_rate(x, w, rate):
    return solution("02_atrous_convolution", "atrous_conv2d_im2col")(x, w, 1)


def im2col_padding_one(x, w, rate):
    """Pads 1 whatever the rate: the output shrinks by 2 * (rate - 1)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = h + 2 - 2 * rate, wd + 2 - 2 * rate
    cols = np.stack([xp[:, :, i * rate:i * rate + ho, j * rate:j * rate + wo]
                     for i in range(3) for j in range(3)], axis=2)
    return (w.reshape(len(w), -1) @ cols.reshape(n, c * 9, ho * wo)).reshape(n, -1, ho, wo)


def im2col_flipped(x, w, rate):
    """Convolution (the kernel flipped) instead of correlation."""
    return solution("02_atrous_convolution", "atrous_conv2d_im2col")(x, w[..., ::-1, ::-1], rate)


def depthwise_ignoring_rate(x, w, rate):
    return solution("03_separable_convolution", "depthwise_conv2d")(x, w, 1)


def depthwise_mixing_channels(x, w, rate):
    """Every output channel reads the sum of all input channels (a dense conv's habit)."""
    mixed = np.repeat(x.sum(axis=1, keepdims=True), x.shape[1], axis=1)
    return solution("03_separable_convolution", "depthwise_conv2d")(mixed, w, rate)


def depthwise_multiplier_tiled(x, w, rate):
    """Output channel o reads input channel o % C (np.tile) instead of o // m."""
    tiled = np.tile(x, (1, len(w) // x.shape[1], 1, 1))  # channel o is x's channel o % C
    return solution("03_separable_convolution", "depthwise_conv2d")(tiled, w, rate)


def _aspp_branches(x, w_pool, w_1x1, w_atrous, rates, pooled=None):
    pooled = F.relu(F.conv2d(F.global_avg_pool(x), w_pool)) if pooled is None else pooled
    return [F.resize_bilinear(pooled, x.shape[2:], align_corners=True),
            F.relu(F.conv2d(x, w_1x1))] + [F.relu(F.atrous_conv2d(x, w, rate=r))
                                           for w, r in zip(w_atrous, rates)]


def aspp_pooling_last(x, w_pool, w_1x1, w_atrous, w_project, rates):
    branches = _aspp_branches(x, w_pool, w_1x1, w_atrous, rates)
    return F.relu(F.conv2d(F.concat(branches[1:] + branches[:1], axis=1), w_project))


def aspp_branches_without_relu(x, w_pool, w_1x1, w_atrous, w_project, rates):
    branches = [F.resize_bilinear(F.conv2d(F.global_avg_pool(x), w_pool), x.shape[2:]),
                F.conv2d(x, w_1x1)] + [F.atrous_conv2d(x, w, rate=r)
                                       for w, r in zip(w_atrous, rates)]
    return F.relu(F.conv2d(F.concat(branches, axis=1), w_project))


def aspp_pooling_in_numpy(x, w_pool, w_1x1, w_atrous, w_project, rates):
    """The right numbers, but the mean taken in NumPy: no gradient flows through the pooling."""
    mean = mdl.Tensor(x.numpy().mean(axis=(2, 3), keepdims=True))
    branches = _aspp_branches(x, w_pool, w_1x1, w_atrous, rates,
                              pooled=F.relu(F.conv2d(mean, w_pool)))
    return F.relu(F.conv2d(F.concat(branches, axis=1), w_project))


def plan_rates_not_multiplied(stem_stride, design_strides, output_stride):
    """Drops the strides past the output stride without widening the later filters."""
    current, plan = stem_stride, []
    for s in design_strides:
        plan.append((1, 1) if current == output_stride else (s, 1))
        current *= 1 if current == output_stride else s
    return plan


def plan_stride_kept(stem_stride, design_strides, output_stride):
    """Multiplies the rates but keeps every unit's design stride."""
    plan = solution("07_xception_output_stride", "output_stride_plan")(
        stem_stride, design_strides, output_stride)
    return [(s, r) for s, (_, r) in zip(design_strides, plan)]


def plan_rate_one_unit_early(stem_stride, design_strides, output_stride):
    """Widens the rate before configuring the unit that gives up its stride."""
    current, rate, plan = stem_stride, 1, []
    for s in design_strides:
        if current == output_stride:
            rate *= s
            plan.append((1, rate))
        else:
            plan.append((s, rate))
            current *= s
    return plan


SCALE_SHIFT = solution("09_cuda_kernel", "SCALE_SHIFT")
SCALE_SHIFT_OUT_OF_BOUNDS = SCALE_SHIFT.replace("s[c] + b[c]", "s[i / L] + b[c]")  # no % C
SCALE_SHIFT_WRONG_INDEX = SCALE_SHIFT.replace("s[c] + b[c]", "s[c] + b[i % C]")
SCALE_SHIFT_ONE_PASS = SCALE_SHIFT.replace("i += stride", "i += n")  # no grid-stride loop


def bn_statistics_held_constant(x, gamma, gy, eps):
    gx, ggamma, gbeta = solution("04_batch_norm", "batch_norm_backward")(x, gamma, gy, eps)
    return gamma[:, None, None] * gy / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps), \
        ggamma, gbeta


def bn_mean_path_only(x, gamma, gy, eps):
    """Forgets that the variance depends on x."""
    gx, ggamma, gbeta = solution("04_batch_norm", "batch_norm_backward")(x, gamma, gy, eps)
    inv_std = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)
    return gamma[:, None, None] * inv_std * (gy - gy.mean(axis=(0, 2, 3), keepdims=True)), \
        ggamma, gbeta


def bn_gamma_summed_over_batch_only(x, gamma, gy, eps):
    gx, _, gbeta = solution("04_batch_norm", "batch_norm_backward")(x, gamma, gy, eps)
    xhat = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(0, 2, 3), keepdims=True) + eps)
    return gx, (gy * xhat).sum(axis=0), gbeta


def _decoder(features, low_level, w_reduce, w_refine1, w_refine2, w_logits, out_size,
             encoder_first=True, align_corners=True, reduce_relu=True, detached=False):
    low = F.conv2d(low_level, w_reduce)
    low = F.relu(low) if reduce_relu else low
    up = F.resize_bilinear(features, low.shape[2:], align_corners=align_corners)
    up = mdl.Tensor(up.numpy()) if detached else up
    y = F.concat([up, low] if encoder_first else [low, up], axis=1)
    y = F.relu(F.atrous_conv2d(F.relu(F.atrous_conv2d(y, w_refine1)), w_refine2))
    return F.resize_bilinear(F.conv2d(y, w_logits), out_size)


def decoder_low_level_first(*args):
    return _decoder(*args, encoder_first=False)


def decoder_align_corners_false(*args):
    return _decoder(*args, align_corners=False)


def decoder_reduction_without_relu(*args):
    return _decoder(*args, reduce_relu=False)


def decoder_logits_at_stride_4(features, low_level, w_reduce, w_refine1, w_refine2, w_logits,
                               out_size):
    """Forgets the last upsampling: logits at the low-level features' size."""
    return _decoder(features, low_level, w_reduce, w_refine1, w_refine2, w_logits,
                    low_level.shape[2:])


def decoder_upsampled_in_numpy(*args):
    """The right numbers, but the encoder features leave the graph: no gradient reaches them."""
    return _decoder(*args, detached=True)


def poly_lr_off_by_one(base_lr, it, max_it, power=0.9):
    """The lr of the next iteration: the first step never runs at base_lr."""
    return base_lr * max(0.0, 1.0 - (it + 1) / max_it) ** power


def poly_lr_linear(base_lr, it, max_it, power=0.9):
    """The power forgotten."""
    return base_lr * max(0.0, 1.0 - it / max_it)


def poly_lr_not_clamped(base_lr, it, max_it, power=0.9):
    """Past max_it, (1 - it / max_it) ** 0.9 is a negative number's power: complex in Python."""
    return base_lr * (1.0 - it / max_it) ** power


def poly_lr_power_fixed(base_lr, it, max_it, power=0.9):
    """The paper's power written in, the argument ignored."""
    return base_lr * max(0.0, 1.0 - it / max_it) ** 0.9


def xent_mean_over_all_pixels(logits, labels, ignore_index=255):
    """Ignored pixels add 0 but are counted in the mean (and in the gradient's division)."""
    loss, grad = solution("08_training", "softmax_cross_entropy_np")(logits, labels, ignore_index)
    counted = max(int((labels != ignore_index).sum()), 1)
    return loss * counted / labels.size, grad * counted / labels.size


def xent_without_max(logits, labels, ignore_index=255):
    """softmax as exp(z) / sum(exp(z)): exp(1000) overflows."""
    valid = labels != ignore_index
    with np.errstate(over="ignore", invalid="ignore"):  # inf / inf: the NaN the check reports
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    onehot = np.arange(logits.shape[1])[None, :, None, None] == labels[:, None]
    count = max(int(valid.sum()), 1)
    return -(np.log(p) * onehot).sum() / count, (p - onehot) * valid[:, None] / count


def xent_gradient_of_the_sum(logits, labels, ignore_index=255):
    """The loss a mean, its gradient not divided by the count."""
    loss, grad = solution("08_training", "softmax_cross_entropy_np")(logits, labels, ignore_index)
    return loss, grad * max(int((labels != ignore_index).sum()), 1)


def xent_ignored_pixels_get_gradient(logits, labels, ignore_index=255):
    """softmax - onehot on every pixel: an ignored one (no onehot entry) gets softmax / count."""
    loss, _ = solution("08_training", "softmax_cross_entropy_np")(logits, labels, ignore_index)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    onehot = np.arange(logits.shape[1])[None, :, None, None] == labels[:, None]
    return loss, (z / z.sum(axis=1, keepdims=True) - onehot) / max(
        int((labels != ignore_index).sum()), 1)


def xent_nan_without_pixels(logits, labels, ignore_index=255):
    """The mean of an empty set: 0 / 0 when every pixel is ignored."""
    loss, grad = solution("08_training", "softmax_cross_entropy_np")(logits, labels, ignore_index)
    count = (labels != ignore_index).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return loss * max(count, 1) / count, grad * max(count, 1) / count


def tile_width_macros_only(tw, run):
    """Only the kernels' width: the host still tiles 32 columns wide."""
    saved = kernels.MACROS["DW_TW"]
    kernels.MACROS["DW_TW"] = tw
    try:
        return run()
    finally:
        kernels.MACROS["DW_TW"] = saved


def tile_width_host_only(tw, run):
    """Only the host's constants: the kernels are still built 32 columns wide."""
    saved = conv.DW_TW, conv.DW_TY
    conv.DW_TW, conv.DW_TY = tw, kernels.BLOCK // tw
    try:
        return run()
    finally:
        conv.DW_TW, conv.DW_TY = saved


def tile_width_rows_kept(tw, run):
    """The width changed on both sides, the host's thread rows left at BLOCK // 32."""
    saved = kernels.MACROS["DW_TW"], conv.DW_TW
    kernels.MACROS["DW_TW"], conv.DW_TW = tw, tw
    try:
        return run()
    finally:
        kernels.MACROS["DW_TW"], conv.DW_TW = saved


def tile_width_not_restored(tw, run):
    kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = tw, tw, kernels.BLOCK // tw
    return run()


def tile_width_restored_on_return_only(tw, run):
    """No try/finally: an exception in run() leaves the new width behind."""
    saved = kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY
    kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = tw, tw, kernels.BLOCK // tw
    result = run()
    kernels.MACROS["DW_TW"], conv.DW_TW, conv.DW_TY = saved
    return result


def _deeplabv3plus(net, x, image_pooling="first", dropout=True, low_level_first=False,
                   align_corners=True, logits_align_corners=True, decoder=True, detached=False):
    """Lesson 11's forward with one mistake switched on by its flag (``image_pooling``: "first",
    "last" or None)."""
    low_level, features = net.backbone(x)
    aspp = net.aspp
    branches = [aspp.conv1x1(features), *(branch(features) for branch in aspp.atrous)]
    if image_pooling:
        pooled = aspp.image_pooling(F.global_avg_pool(features))
        pooled = F.resize_bilinear(pooled, features.shape[2:], align_corners=True)
        branches.insert(0 if image_pooling == "first" else len(branches), pooled)
    y = aspp.project(F.concat(branches, axis=1))
    y = aspp.dropout(y) if dropout else y
    if decoder:
        low = net.decoder.low_level(low_level)
        y = F.resize_bilinear(y, low.shape[2:], align_corners=align_corners)
        y = mdl.Tensor(y.numpy()) if detached else y
        y = net.decoder.refine(F.concat([low, y] if low_level_first else [y, low], axis=1))
    return F.resize_bilinear(net.logits(y), x.shape[2:], align_corners=logits_align_corners)


def deeplabv3plus_low_level_first(net, x):
    return _deeplabv3plus(net, x, low_level_first=True)


def deeplabv3plus_align_corners_false(net, x):
    return _deeplabv3plus(net, x, align_corners=False)


def deeplabv3plus_without_image_pooling(net, x):
    return _deeplabv3plus(net, x, image_pooling=None)


def deeplabv3plus_pooling_last(net, x):
    return _deeplabv3plus(net, x, image_pooling="last")


def deeplabv3plus_logits_align_corners_false(net, x):
    return _deeplabv3plus(net, x, logits_align_corners=False)


def deeplabv3plus_aspp_as_a_whole(net, x):
    """The right numbers, but the wiring of the ASPP and the decoder left to the package."""
    low_level, features = net.backbone(x)
    y = net.decoder(net.aspp(features), low_level)
    return F.resize_bilinear(net.logits(y), x.shape[2:], align_corners=True)


def deeplabv3plus_without_decoder(net, x):
    return _deeplabv3plus(net, x, decoder=False)


def deeplabv3plus_without_dropout(net, x):
    """Right in eval mode, where dropout passes its input through."""
    return _deeplabv3plus(net, x, dropout=False)


def deeplabv3plus_upsampled_in_numpy(net, x):
    """The right numbers, but the ASPP output leaves the graph: no gradient reaches the encoder."""
    return _deeplabv3plus(net, x, detached=True)


EXERCISES = {  # grader, lesson, name, [(wrong solution, what its message must say)]
    "sigmoid_backward": (checks.check_sigmoid_backward, "01_autograd", "Sigmoid", [
        (SigmoidWrongSign, "gradient check failed for input 0"),
        (SigmoidSummed, "shape: backward(gy) has shape ()"),
        (SigmoidForgetsChainRule, "gradient check failed for input 0"),
    ]),
    "atrous_im2col": (checks.check_atrous_im2col, "02_atrous_convolution",
                      "atrous_conv2d_im2col", [
        (im2col_ignoring_rate, "output at rate 2 (index: image, channel, row, column) differs"),
        (im2col_padding_one, "shape: the output at rate 2 has shape (2, 4, 4, 3)"),
        (im2col_flipped, "output at rate 1"),
    ]),
    "depthwise_conv": (checks.check_depthwise_conv, "03_separable_convolution",
                       "depthwise_conv2d", [
        (depthwise_mixing_channels, "the output at rate 1, multiplier 1 (index: image, channel"),
        (depthwise_ignoring_rate, "right at (rate, multiplier) [(1, 1)]"),
        (depthwise_multiplier_tiled, "output channel o reads input channel o // m, not o % C"),
    ]),
    "aspp": (checks.check_aspp, "05_aspp", "aspp_forward", [
        (aspp_pooling_last, "the branches go in the official order: image pooling, 1x1"),
        (aspp_branches_without_relu, "value: the output (index: image, channel, row, column) "
                                     "differs"),
        (aspp_pooling_in_numpy, "some step left the graph"),
    ]),
    "output_stride_plan": (checks.check_output_stride_plan, "07_xception_output_stride",
                           "output_stride_plan", [
        (plan_rates_not_multiplied, "Xception-65 at output stride 16: unit 21 (exit block 2) has "
                                    "(stride, rate) (1, 1), expected (1, 2)"),
        (plan_stride_kept, "Xception-65 at output stride 16: unit 20 (exit block 1) has "
                           "(stride, rate) (2, 1), expected (1, 1)"),
        (plan_rate_one_unit_early, "Xception-65 at output stride 16: unit 20 (exit block 1) has "
                                   "(stride, rate) (1, 2), expected (1, 1)"),
    ]),
    "scale_shift_kernel": (checks.check_scale_shift_kernel, "09_cuda_kernel", "SCALE_SHIFT", [
        (SCALE_SHIFT_OUT_OF_BOUNDS, "the kernel failed on emu in checking mode: kernel "
                                    "scale_shift_forward: out-of-bounds access to argument 's'"),
        (SCALE_SHIFT_WRONG_INDEX, "y on (2, 3, 5, 7) with a grid of n elements (index: image, "
                                  "channel, row, column) differs at 140 of 210 entries; first at "
                                  "index (0, 0, 0, 1)"),
        (SCALE_SHIFT_ONE_PASS, "only the first 256 were written: a grid-stride loop"),
    ]),
    "batch_norm_backward": (checks.check_batch_norm_backward, "04_batch_norm",
                            "batch_norm_backward", [
        (bn_statistics_held_constant, "held constant: they depend on x too"),
        (bn_mean_path_only, "value: gradient gx (index: image, channel, row, column) differs"),
        (bn_gamma_summed_over_batch_only, "shape: ggamma has shape (3, 3, 2), expected (3,)"),
    ]),
    "decoder": (checks.check_decoder, "06_decoder", "decoder_forward", [
        (decoder_low_level_first, "the encoder features go first in the concatenation"),
        (decoder_align_corners_false, "the encoder features are upsampled with "
                                      "align_corners=False"),
        (decoder_reduction_without_relu, "the 1x1 reduction of the low-level features is "
                                         "followed by a ReLU"),
        (decoder_logits_at_stride_4, "shape: the output (the logits at out_size) has shape "
                                     "(2, 2, 5, 7), expected (2, 2, 17, 25)"),
        (decoder_upsampled_in_numpy, "some step left the graph"),
    ]),
    "poly_lr": (checks.check_poly_lr, "08_training", "poly_lr", [
        (poly_lr_off_by_one, "poly_lr(0.3, 0, 2000, power=0.9) = 0.2998649966243811, expected "
                             "0.3; the first iteration, it = 0, runs at base_lr"),
        (poly_lr_linear, "that is the linear schedule"),
        (poly_lr_not_clamped, "poly_lr(0.3, 2500, 2000, power=0.9) = (-0.0819"),
        (poly_lr_power_fixed, "poly_lr(1.0, 1, 4, power=1) = 0.7718895067235705, expected 0.75; "
                              "that is power 0.9: use the power argument"),
    ]),
    "ignore_label_loss": (checks.check_ignore_label_loss, "08_training",
                          "softmax_cross_entropy_np", [
        (xent_mean_over_all_pixels, "that is the mean over all pixels: divide by the number of "
                                    "pixels whose label is not 255"),
        (xent_without_max, "the loss on logits near 1000 (with label 255 as above) is nan"),
        (xent_gradient_of_the_sum, "the gradient of the sum: the loss is a mean"),
        (xent_ignored_pixels_get_gradient, "wrong only on pixels labelled 255"),
        (xent_nan_without_pixels, "with no pixel counted the loss is 0 (and the gradient 0), not "
                                  "0 / 0"),
    ]),
    "tile_width": (checks.check_tile_width, "10_fast_kernel", "with_tile_width", [
        (tile_width_macros_only, "out-of-bounds access to argument 'part' (float64, shape (18, "
                                 "4)): element 74, 2 past the end. Inside, kernels.MACROS['DW_TW"
                                 "'], conv.DW_TW, conv.DW_TY = 16, 32, 8, expected (16, 16, 16)"),
        (tile_width_host_only, "out-of-bounds access to argument 'part' (float64, shape (18, 6)): "
                               "element 108, 0 past the end. Inside, kernels.MACROS['DW_TW'], "
                               "conv.DW_TW, conv.DW_TY = 32, 16, 16"),
        (tile_width_rows_kept, "conv.DW_TY = 16, 16, 8, expected (16, 16, 16)"),
        (tile_width_not_restored, "after with_tile_width(16, run) returned, kernels.MACROS['DW_TW"
                                  "'], conv.DW_TW, conv.DW_TY = 16, 16, 16; expected the old "
                                  "(32, 32, 8) back"),
        (tile_width_restored_on_return_only, "after run() raised inside with_tile_width(16, run)"),
    ]),
    "deeplabv3plus_forward": (checks.check_deeplabv3plus_forward, "11_capstone",
                              "deeplabv3plus_forward", [
        (deeplabv3plus_low_level_first, "the low-level features come first"),
        (deeplabv3plus_align_corners_false, "upsampled with align_corners=False"),
        (deeplabv3plus_without_image_pooling, "shape: the input of net.aspp.project has shape "
                                              "(4, 256, 9, 9), expected (4, 320, 9, 9)"),
        (deeplabv3plus_pooling_last, "the branches are concatenated as (1x1, atrous 0, atrous 1, "
                                     "atrous 2, image pooling)"),
        (deeplabv3plus_logits_align_corners_false, "the logits are upsampled with "
                                                   "align_corners=False"),
        (deeplabv3plus_aspp_as_a_whole, "calls net.aspp(...) as a whole"),
        (deeplabv3plus_without_decoder, "as if the decoder were skipped"),
        (deeplabv3plus_without_dropout, "net.aspp.dropout was called 0 times, expected once"),
        (deeplabv3plus_upsampled_in_numpy, "the one nearest the output: net.aspp.project.bn.beta "
                                           "(no gradient)"),
    ]),
}


def graded_stubs(cells, lesson):
    """[(index of a stub cell, its exercise in EXERCISES)] of a lesson's notebook cells; an
    AssertionError if a stub is not followed by the check cell of an exercise of EXERCISES."""
    found = []
    for i, (cell, after) in enumerate(zip(cells, cells[1:])):
        if "exercise-stub" in cell.metadata.get("tags", []):
            graded = [e for e, (grader, stem, name, _) in EXERCISES.items()
                      if stem == lesson and f"{grader.__name__}({name})" in after.source]
            assert len(graded) == 1, f"{lesson}.ipynb: no check cell of EXERCISES follows the " \
                                     f"stub {cell.source.splitlines()[0]!r}"
            found.append((i, graded[0]))
    return found


@pytest.mark.parametrize("exercise", EXERCISES)
def test_stub_is_not_done(exercise, capsys):
    grader, lesson, name, _ = EXERCISES[exercise]
    assert grader(stub(lesson, name)) == checks.NOT_DONE
    assert checks.NOT_DONE in capsys.readouterr().out


@pytest.mark.parametrize("exercise", EXERCISES)
def test_reference_solution_passes(exercise):
    grader, lesson, name, _ = EXERCISES[exercise]
    assert grader(solution(lesson, name)) == checks.PASSED


@pytest.mark.parametrize("exercise, wrong", [(e, i) for e, spec in EXERCISES.items()
                                             for i in range(len(spec[3]))])
def test_wrong_solution_fails(exercise, wrong):
    grader, _, _, wrongs = EXERCISES[exercise]
    fn, message = wrongs[wrong]
    with pytest.raises(AssertionError, match=re.escape(message)):
        grader(fn)


def test_every_exercise_is_graded_and_tested():
    """Each notebook's stub cell is followed by the check cell of its grader, and every grader of
    lessons/checks.py is among EXERCISES (so none goes untested on wrong solutions)."""
    in_notebooks = set()
    for path in sorted(LESSONS.glob("*.ipynb")):
        in_notebooks.update(e for _, e in graded_stubs(nbformat.read(path, as_version=4).cells,
                                                       path.stem))
    assert in_notebooks == set(EXERCISES), f"not in a notebook: {set(EXERCISES) - in_notebooks}"
    graders = {n for n, f in vars(checks).items()
               if n.startswith("check_") and getattr(f, "__module__", None) == checks.__name__}
    assert graders == {spec[0].__name__ for spec in EXERCISES.values()}


def test_capstone_trains_only_a_forward_that_passed():
    """Lesson 11 trains the learner's forward only when checks.passed says its check passed."""
    shipped, right = (f("11_capstone", "deeplabv3plus_forward") for f in (stub, solution))
    checks.check_deeplabv3plus_forward(shipped)
    assert not checks.passed(shipped)
    checks.check_deeplabv3plus_forward(right)
    assert checks.passed(right) and not checks.passed(shipped)
    with pytest.raises(AssertionError):
        checks.check_deeplabv3plus_forward(deeplabv3plus_without_dropout)
    assert not checks.passed(deeplabv3plus_without_dropout) and not checks.passed(right)
