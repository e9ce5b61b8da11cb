"""Fine-tuning metrics against hand computations: the confusion-matrix arithmetic is written out here."""
import math

import numpy as np
import pytest

from linformer_pt.tasks.metrics import (
    METRICS_HIGHER_IS_BETTER, accuracy, average_ranks, classification_metrics, macro_f1, mcc, pearson,
    regression_metrics, spearman,
)  # fmt: skip

# Binary: (gold, pred) = TP TP TP FN | TN TN FP FP, so TP=3 FN=1 TN=2 FP=2.
GOLD2 = np.array([1, 1, 1, 0, 0, 0, 1, 0])
PRED2 = np.array([1, 0, 1, 0, 1, 0, 1, 1])
# Three classes; confusion (rows gold, columns pred): [[2,1,0],[0,1,1],[1,1,2]].
GOLD3 = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
PRED3 = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])


def test_binary_accuracy_f1_mcc():
    assert accuracy(PRED2, GOLD2) == pytest.approx(5 / 8)
    # class 1: 2TP/(2TP+FP+FN) = 6/9; class 0 (TP=2, FP=1, FN=2): 4/7
    assert macro_f1(PRED2, GOLD2, 2) == pytest.approx((6 / 9 + 4 / 7) / 2)
    # (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (6 - 2) / sqrt(5*4*4*3)
    assert mcc(PRED2, GOLD2, 2) == pytest.approx(4 / math.sqrt(240))


def test_three_classes():
    assert accuracy(PRED3, GOLD3) == pytest.approx(5 / 9)
    # per class (TP, FP, FN): (2,1,1) -> 4/6, (1,2,1) -> 2/5, (2,1,2) -> 4/7
    assert macro_f1(PRED3, GOLD3, 3) == pytest.approx((4 / 6 + 2 / 5 + 4 / 7) / 3)
    # t = (3,2,4), p = (3,3,3), c = 5, s = 9: (45 - 27) / sqrt((81 - 27) (81 - 29))
    assert mcc(PRED3, GOLD3, 3) == pytest.approx(18 / math.sqrt(54 * 52))
    scores = np.eye(3)[PRED3] * 2.0 - 1.0  # logits whose argmax is PRED3
    assert classification_metrics(scores, GOLD3) == pytest.approx(
        {"accuracy": 5 / 9, "f1": (4 / 6 + 2 / 5 + 4 / 7) / 3, "mcc": 18 / math.sqrt(54 * 52)}
    )


def test_f1_counts_an_absent_class_as_zero():
    # class 0: (TP, FP, FN) = (1, 0, 1) -> 2/3; class 1: (2, 1, 0) -> 4/5; class 2 never seen -> 0
    assert macro_f1(np.array([0, 1, 1, 1]), np.array([0, 1, 0, 1]), 3) == pytest.approx((2 / 3 + 4 / 5) / 3)


def test_mcc_is_zero_when_undefined_and_one_when_perfect():
    assert mcc(np.zeros(4, dtype=int), np.array([0, 1, 0, 1]), 2) == 0.0
    assert mcc(np.array([0, 1, 0, 1]), np.ones(4, dtype=int), 2) == 0.0
    assert mcc(GOLD3, GOLD3, 3) == pytest.approx(1.0)
    assert mcc(1 - GOLD2, GOLD2, 2) == pytest.approx(-1.0)


def test_pearson():
    # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 0, 4): sum dx dy = 11, sum dx^2 = 5, sum dy^2 = 26
    assert pearson(np.array([1, 2, 3, 4]), np.array([2, 4, 5, 9])) == pytest.approx(11 / math.sqrt(130))
    assert pearson(np.array([1, 2, 3]), np.array([-2, -4, -6])) == pytest.approx(-1.0)


def test_spearman_with_ties_uses_average_ranks():
    assert average_ranks(np.array([10, 30, 20, 20, 10])).tolist() == [1.5, 5.0, 3.5, 3.5, 1.5]
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3.5, 3.5): sum dx dy = 3.75, sum dx^2 = sum dy^2 = 4.5
    assert spearman(np.array([1, 2, 2, 3]), np.array([10, 20, 30, 30])) == pytest.approx(3.75 / 4.5)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 8.0, 27.0])) == pytest.approx(1.0)


def test_a_constant_side_gives_nan():
    x, constant = np.array([1.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0])
    assert math.isnan(pearson(x, constant)) and math.isnan(pearson(constant, x))
    assert math.isnan(spearman(x, constant))


def test_regression_metrics():
    out = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0]))
    assert out == pytest.approx({"pearson": 1.0, "spearman": 1.0, "mse": (0 + 1 + 4) / 3})


def test_every_metric_has_a_direction():
    assert set(METRICS_HIGHER_IS_BETTER) == {"accuracy", "f1", "mcc", "pearson", "spearman", "mse", "loss"}
    assert not METRICS_HIGHER_IS_BETTER["mse"] and METRICS_HIGHER_IS_BETTER["mcc"]
