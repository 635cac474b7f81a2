"""Multi-label metrics from 0/1 targets, per-label probabilities and per-label thresholds.

Pure functions, every formula scikit-learn's (so each number can be checked against it). A label
with no positive (or no negative) row in the data has no ROC AUC: null, with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from tunelab.models.multilabel import decide

PROBABILITY_EPS = 1e-7  # clips probabilities in the loss, as a 0 or 1 would make it infinite


def multilabel_metrics(y_true: np.ndarray, proba: np.ndarray, thresholds: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    """Every test metric for one set of multi-label predictions.

    y_true: (n, k) 0/1; proba: (n, k) per-label probabilities; thresholds: k decision thresholds.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=np.float64)
    if y_true.shape != proba.shape or y_true.shape[1] != len(labels) or len(thresholds) != len(labels):
        raise ValueError(f"shapes disagree: targets {y_true.shape}, probabilities {proba.shape}, {len(thresholds)} thresholds, {len(labels)} labels")
    y_pred = decide(proba, thresholds)
    clipped = np.clip(proba, PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    result: dict[str, Any] = {
        "n": int(len(y_true)),
        "labels": list(labels),
        # The mean binary cross-entropy over rows and labels: the quantity training minimised.
        "loss": float(-np.mean(y_true * np.log(clipped) + (1 - y_true) * np.log(1 - clipped))),
        # Subset accuracy: the whole label set of a row must be right.
        "subset_accuracy": float(accuracy_score(y_true, y_pred)),
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "label_cardinality": {"true": float(y_true.sum(axis=1).mean()), "predicted": float(y_pred.sum(axis=1).mean())},
    }
    for average in ("micro", "macro", "samples"):
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        result[f"f1_{average}"] = float(f1)
        result[average] = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    auc = per_label_ranking(y_true, proba, labels, roc_auc_score, "ROC AUC")
    ap = per_label_ranking(y_true, proba, labels, average_precision_score, "average precision")
    result["per_label"] = {
        label: {
            "precision": float(precision[j]),
            "recall": float(recall[j]),
            "f1": float(f1[j]),
            "support": int(support[j]),
            "predicted": int(y_pred[:, j].sum()),
            "threshold": float(thresholds[j]),
            "roc_auc": auc["per_label"][label],
            "average_precision": ap["per_label"][label],
        }
        for j, label in enumerate(labels)
    }
    result["roc_auc"] = auc
    result["average_precision"] = ap
    result["cooccurrence"] = {"labels": list(labels), "counts": (y_true.T @ y_true).tolist()}
    return result


def per_label_ranking(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], metric, name: str) -> dict[str, Any]:
    """`metric` for each label's column, their macro mean over the defined ones, and the micro figure."""
    per_label: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    for j, label in enumerate(labels):
        positives = int(y_true[:, j].sum())
        if positives == 0 or (name == "ROC AUC" and positives == len(y_true)):
            per_label[label] = None
            undefined[label] = f"{name} of '{label}' is undefined: " + ("no row has it" if positives == 0 else "every row has it")
            continue
        per_label[label] = float(metric(y_true[:, j], proba[:, j]))
    defined = [v for v in per_label.values() if v is not None]
    micro = None
    if 0 < y_true.sum() < y_true.size:
        micro = float(metric(y_true, proba, average="micro"))
    return {
        "per_label": per_label,
        "macro": float(np.mean(defined)) if defined else None,
        "micro": micro,
        "undefined": undefined,
        "macro_note": f"macro mean over the {len(defined)} of {len(labels)} labels where it is defined" if len(defined) < len(labels) else "",
    }
