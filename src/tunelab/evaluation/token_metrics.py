"""Token-classification metrics: entity-level precision, recall and F1 per type (seqeval, conlleval's
reading: an entity counts only when its type and both boundaries are right), their micro and macro
averages, word accuracy, and the confusion matrix over word tags (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn.metrics import confusion_matrix


def entity_scores(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level figures: f1_micro, precision_micro, recall_micro, f1_macro, and per_type {type: precision, recall, f1, support}."""
    from seqeval.metrics import classification_report

    report = classification_report([list(t) for t in true_tags], [list(p) for p in predicted_tags], output_dict=True, zero_division=0)
    averages = {"micro avg", "macro avg", "weighted avg"}
    per_type = {
        kind: {"precision": float(row["precision"]), "recall": float(row["recall"]), "f1": float(row["f1-score"]), "support": int(row["support"])}
        for kind, row in report.items()
        if kind not in averages
    }
    micro, macro = report.get("micro avg", {}), report.get("macro avg", {})
    return {
        "f1_micro": float(micro.get("f1-score", 0.0)),
        "precision_micro": float(micro.get("precision", 0.0)),
        "recall_micro": float(micro.get("recall", 0.0)),
        "f1_macro": float(macro.get("f1-score", 0.0)),
        "entities": int(micro.get("support", 0)),
        "per_type": per_type,
    }


def token_metrics(true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]], tags: list[str]) -> dict[str, Any]:
    """entity_scores, plus word accuracy and the confusion matrix over tags (rows true, columns predicted, in `tags` order)."""
    flat_true = [tag for sentence in true_tags for tag in sentence]
    flat_predicted = [tag for sentence in predicted_tags for tag in sentence]
    matrix = confusion_matrix(flat_true, flat_predicted, labels=tags)
    return {
        **entity_scores(true_tags, predicted_tags),
        "word_accuracy": float(sum(t == p for t, p in zip(flat_true, flat_predicted)) / max(1, len(flat_true))),
        "n": len(true_tags),
        "words": len(flat_true),
        "confusion_matrix": {"tags": tags, "counts": matrix.tolist()},
    }
