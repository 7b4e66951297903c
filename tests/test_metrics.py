"""Metrics against a confusion matrix counted by hand (ARCHITECTURE.md section 8)."""
import numpy as np
import pytest

from minideeplab.metrics import (ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou,
                                 pixel_accuracy)

LABEL = np.array([[0, 0, 1, 1],
                  [0, 2, 1, 255],
                  [2, 2, 255, 1]])
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 0, 3],
                 [2, 0, 1, 2]])
# rows = ground truth, columns = prediction; the two 255 pixels are not counted.
HAND = np.array([[2, 1, 0, 0],
                 [1, 2, 1, 0],
                 [1, 0, 2, 0],
                 [0, 0, 0, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, LABEL, num_classes=4)
    np.testing.assert_array_equal(cm, HAND)
    assert cm.dtype == np.int64


def test_iou_miou_accuracy_by_hand():
    iou = iou_per_class(HAND)
    # class 0: tp 2, gt 3, pred 4 -> 2/5; class 1: 2/(4+3-2); class 2: 2/(3+3-2); class 3 absent
    np.testing.assert_allclose(iou[:3], [2 / 5, 2 / 5, 2 / 4])
    assert np.isnan(iou[3])
    assert mean_iou(HAND) == pytest.approx((0.4 + 0.4 + 0.5) / 3)
    assert pixel_accuracy(HAND) == pytest.approx(6 / 10)


def test_class_only_predicted_counts_in_the_mean():
    cm = confusion_matrix(np.array([0, 3]), np.array([0, 0]), num_classes=4)
    np.testing.assert_allclose(iou_per_class(cm)[[0, 3]], [0.5, 0.0])
    assert mean_iou(cm) == pytest.approx(0.25)


def test_accumulating_equals_one_matrix_over_everything():
    acc = ConfusionMatrix(4)
    for rows in (slice(0, 1), slice(1, 3)):
        acc.update(PRED[rows], LABEL[rows])
    np.testing.assert_array_equal(acc.matrix, HAND)
    assert acc.miou() == pytest.approx(mean_iou(HAND))
    assert acc.pixel_accuracy() == pytest.approx(0.6)
    acc.reset()
    assert acc.matrix.sum() == 0 and np.isnan(acc.miou())


@pytest.mark.parametrize("pred, label, word", [(np.array([4]), np.array([0]), "pred"),
                                               (np.array([0]), np.array([50]), "label"),
                                               (np.array([0, 1]), np.array([0]), "pixels")])
def test_bad_input_names_the_problem(pred, label, word):
    with pytest.raises(ValueError, match=word):
        confusion_matrix(pred, label, num_classes=4)
