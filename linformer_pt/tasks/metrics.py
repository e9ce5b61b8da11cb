"""Evaluation metrics of fine-tuning tasks: accuracy, macro F1 and Matthews correlation for classification,
Pearson, Spearman and mean squared error for regression; plain numpy, matching scikit-learn and scipy.
"""
from typing import Dict

import numpy as np

# Which way is better, for picking the best checkpoint by any of these.
METRICS_HIGHER_IS_BETTER = {
    "accuracy": True, "f1": True, "mcc": True, "pearson": True, "spearman": True, "mse": False, "loss": False,
}  # fmt: skip


def _confusion(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> np.ndarray:
    """M[i, j] = number of examples of gold class i predicted as class j."""
    pred, gold = np.asarray(pred, dtype=np.int64).ravel(), np.asarray(gold, dtype=np.int64).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"pred has {pred.size} values, gold {gold.size}")
    return np.bincount(gold * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes, -1)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of examples where pred == gold: (1/N) sum_i [pred_i = gold_i]."""
    pred, gold = np.asarray(pred).ravel(), np.asarray(gold).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"pred has {pred.size} values, gold {gold.size}")
    return float(np.mean(pred == gold))


def macro_f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over classes c = 0..C-1 of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    F1_c is 0 when its denominator is 0 (class c neither in gold nor predicted), as scikit-learn's
    f1_score(labels=range(C), average="macro", zero_division=0) counts it.
    """
    m = _confusion(pred, gold, num_classes)
    tp = np.diag(m).astype(np.float64)
    denominator = m.sum(axis=0) + m.sum(axis=1)  # (TP + FP) + (TP + FN)
    f1 = np.divide(2 * tp, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1.mean())


def mcc(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Matthews correlation, multiclass (Gorodkin's R_K, scikit-learn's matthews_corrcoef).

    With t_k gold and p_k predicted counts of class k, c correct predictions and s examples:
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)); 0 when the denominator is 0
    (all gold or all predictions in one class). With two classes it is the usual (TP TN - FP FN) / sqrt(...).
    """
    m = _confusion(pred, gold, num_classes).astype(np.float64)
    t, p, c, s = m.sum(axis=1), m.sum(axis=0), np.trace(m), m.sum()
    cov_tp, cov_pp, cov_tt = c * s - p @ t, s * s - p @ p, s * s - t @ t
    return float(cov_tp / np.sqrt(cov_pp * cov_tt)) if cov_pp * cov_tt > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2).

    nan when either side is constant (the correlation is undefined), as scipy.stats.pearsonr gives.
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x has {x.size} values, y {y.size}")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    # Exactly constant sides give dx = 0; no tolerance, so a tiny but real spread still correlates.
    return float(dx @ dy / denominator) if denominator > 0 else float("nan")


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of x, tied values sharing the mean of the ranks they span (scipy's rankdata 'average')."""
    _, inverse, counts = np.unique(np.asarray(x).ravel(), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (ends - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average ranks of x and of y (ties share their mean rank).

    nan when either side is constant, as scipy.stats.spearmanr gives.
    """
    return pearson(average_ranks(x), average_ranks(y))


def classification_metrics(logits_or_probs: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
    """accuracy, f1 (macro) and mcc of the argmax class of each row of an (N, C) score array against gold (N,)."""
    scores = np.asarray(logits_or_probs)
    if scores.ndim != 2:
        raise ValueError(f"expected (N, C) scores, got shape {scores.shape}")
    pred, num_classes = scores.argmax(axis=1), scores.shape[1]
    return {
        "accuracy": accuracy(pred, gold),
        "f1": macro_f1(pred, gold, num_classes),
        "mcc": mcc(pred, gold, num_classes),
    }


def regression_metrics(pred: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
    """pearson, spearman and mse = (1/N) sum_i (pred_i - gold_i)^2 of predictions (N,) against gold (N,)."""
    pred, gold = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(gold, dtype=np.float64).ravel()
    if pred.shape != gold.shape:
        raise ValueError(f"pred has {pred.size} values, gold {gold.size}")
    return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold), "mse": float(np.mean((pred - gold) ** 2))}
