"""Classification metrics from true label ids and predicted probabilities.

Pure functions: numbers in, a JSON-ready dict out. Every formula is scikit-learn's, so a number
here can be checked against scikit-learn on the same predictions. A class that does not occur in
the evaluation data must not crash anything: its ranking metrics are reported as null with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

ECE_BINS = 10


def classification_metrics(y_true: Sequence[int], proba: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """All of the evaluation metrics for one set of predictions.

    y_true: label ids (0..k-1); proba: (n, k) class probabilities; labels: the k label names.
    """
    y_true, proba = check_inputs(y_true, proba, labels)
    k = len(labels)
    ids = list(range(k))
    y_pred = proba.argmax(axis=1)
    present = set(np.unique(y_true).tolist())
    absent = [labels[i] for i in ids if i not in present]

    result: dict[str, Any] = {
        "n": int(len(y_true)),
        "labels": list(labels),
        "absent_classes": absent,
        # labels= keeps the loss defined when some classes do not occur in this data.
        "loss": float(log_loss(y_true, proba, labels=ids)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    result.update(precision_recall_f1(y_true, y_pred, labels))
    result["roc_auc"] = ranking_metric(y_true, proba, labels, roc_auc_score, "ROC AUC")
    result["average_precision"] = ranking_metric(y_true, proba, labels, average_precision_score, "average precision")
    if k > 2:
        result["top_2_accuracy"] = float(top_k_accuracy_score(y_true, proba, k=2, labels=ids))
    result["calibration"] = calibration(y_true, proba)
    result["ece"] = result["calibration"]["ece"]
    result["confusion_matrix"] = {
        "labels": list(labels),
        "counts": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        # Rows of absent classes are all zero (scikit-learn turns 0/0 into 0).
        "normalized": confusion_matrix(y_true, y_pred, labels=ids, normalize="true").tolist(),
    }
    return result


def check_inputs(y_true: Sequence[int], proba: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[0] != len(y_true) or proba.shape[1] != len(labels):
        raise ValueError(f"proba must have shape ({len(y_true)}, {len(labels)}), got {proba.shape}")
    if len(y_true) == 0:
        raise ValueError("no examples to evaluate")
    if len(labels) < 2:
        raise ValueError("a classifier needs at least two labels")
    if y_true.min() < 0 or y_true.max() >= len(labels):
        raise ValueError("label ids must lie in 0..len(labels)-1")
    # float32 softmax rows may sum to 1 +- 1e-7; scikit-learn's log_loss warns about that.
    return y_true, proba / proba.sum(axis=1, keepdims=True)


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    ids = list(range(len(labels)))
    # zero_division=0: a class never predicted (or absent) scores 0 rather than raising a warning.
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    per_class = {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i, name in enumerate(labels)}
    out: dict[str, Any] = {"per_class": per_class}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=ids, average=average, zero_division=0)
        out[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(len(y_true))}
    out["f1_macro"] = out["macro"]["f1"]
    out["f1_weighted"] = out["weighted"]["f1"]
    return out


def ranking_metric(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], score, name: str) -> dict[str, Any]:
    """One-vs-rest `score` (roc_auc_score or average_precision_score) per class, and their macro mean.

    A class is scored only when the data has both positives and negatives for it; otherwise it is
    null with the reason. The macro mean is over the classes that could be scored, which equals
    scikit-learn's multi-class macro average when every class occurs.
    """
    per_class: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    for i, label in enumerate(labels):
        positives = int((y_true == i).sum())
        if positives == 0:
            undefined[label] = f"{name} is not defined: class '{label}' does not occur in the evaluation data"
            per_class[label] = None
        elif positives == len(y_true):
            undefined[label] = f"{name} is not defined: every example is '{label}', so there are no negatives"
            per_class[label] = None
        else:
            per_class[label] = float(score(y_true == i, proba[:, i]))
    scored = [v for v in per_class.values() if v is not None]
    macro = float(np.mean(scored)) if scored else None
    out: dict[str, Any] = {"per_class": per_class, "macro": macro, "undefined": undefined}
    if undefined and scored:
        out["macro_note"] = f"macro mean over the {len(scored)} of {len(labels)} classes where it is defined"
    elif not scored:
        out["macro_note"] = f"{name} is not defined: the evaluation data has a single class"
    return out


def calibration(y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Reliability of the top-class confidence, and the expected calibration error.

    ECE = sum over equal-width confidence bins of (bin size / n) * |accuracy - mean confidence|;
    the per-bin accuracy and confidence are scikit-learn's calibration_curve.
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(int)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform", pos_label=1)
    # calibration_curve drops empty bins; count the examples per bin with its own binning rule.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], confidence)
    counts = np.bincount(bin_ids, minlength=n_bins)
    counts = counts[counts > 0]
    ece = float(np.sum(counts / len(y_true) * np.abs(accuracy - mean_confidence)))
    return {
        "ece": ece,
        "n_bins": n_bins,
        "bin_accuracy": accuracy.tolist(),
        "bin_confidence": mean_confidence.tolist(),
        "bin_count": counts.tolist(),
    }
