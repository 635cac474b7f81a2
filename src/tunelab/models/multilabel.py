"""A multi-label classifier: a sigmoid per label and a decision threshold per label.

The thresholds are chosen on the eval split (`choose_thresholds`) when the run is trained, and
saved as the run's thresholds.json; predict, eval and the TF-IDF baseline all decide with
`decide`, so a label is "on" the same way everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.run import Run

TASK = "multi-label"
THRESHOLDS_FILE = "thresholds.json"
# A label needs this many positive eval rows for a threshold of its own; with fewer, one F1-best
# threshold over every label's eval rows pooled is steadier than a guess from two or three rows.
MIN_POSITIVES = 5
LABEL_SETS_COMPARED = "label sets after the run's thresholds"  # what a multi-label export's parity agreement compares
DEFAULT_THRESHOLD = 0.5  # when the eval split cannot say anything (no positive rows at all)
RULE = (
    f"per label, the threshold with the best F1 on the eval split, midway between the lowest accepted and the next lower score; "
    f"a label with fewer than {MIN_POSITIVES} positive eval rows takes the one threshold with the best micro-F1 over all labels' eval rows"
)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def decide(proba: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """0/1 per (row, label): on when the probability reaches the label's threshold."""
    return (np.asarray(proba) >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(int)


def label_set_agreement(logits: np.ndarray, reference: np.ndarray, thresholds: Sequence[float]) -> float:
    """The share of rows whose label set (each label's sigmoid against its threshold) is the same from both logits."""
    ours, theirs = decide(sigmoid(logits), thresholds), decide(sigmoid(reference), thresholds)
    return float((ours == theirs).all(axis=1).mean())


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold with the best F1 for 0/1 targets `y`, and that F1; (0.5, 0.0) without positives.

    Among equal F1s the lowest threshold wins (more recall); the threshold sits midway between the
    lowest accepted score and the next lower one, so a test score a hair below an eval score is
    not lost to where the eval rows happened to fall.
    """
    from sklearn.metrics import precision_recall_curve

    y, scores = np.asarray(y).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if y.sum() == 0:
        return DEFAULT_THRESHOLD, 0.0
    precision, recall, thresholds = precision_recall_curve(y, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    lowest_accepted = float(thresholds[best])
    below = scores[scores < lowest_accepted]
    threshold = (lowest_accepted + float(below.max())) / 2 if len(below) else lowest_accepted / 2
    return threshold, float(f1[best])


def choose_thresholds(y_eval: np.ndarray, proba_eval: np.ndarray, labels: Sequence[str], rows_description: str) -> dict[str, Any]:
    """Each label's threshold, chosen on the eval split's targets and probabilities (see RULE).

    Returns what thresholds.json and metrics.json["thresholds"] hold: the values in label order,
    and for each label how it was chosen.
    """
    y_eval, proba_eval = np.asarray(y_eval), np.asarray(proba_eval, dtype=np.float64)
    pooled, pooled_f1 = best_f1_threshold(y_eval.ravel(), proba_eval.ravel())
    values, per_label = [], {}
    for j, label in enumerate(labels):
        positives = int(y_eval[:, j].sum())
        if positives >= MIN_POSITIVES:
            value, f1 = best_f1_threshold(y_eval[:, j], proba_eval[:, j])
            chosen_by = "label"
        else:
            value, f1 = pooled, None
            chosen_by = "pooled"
        values.append(value)
        per_label[label] = {"threshold": value, "chosen_by": chosen_by, "eval_positives": positives, "eval_f1": f1}
    return {
        "chosen_on": rows_description,
        "rule": RULE,
        "pooled_threshold": pooled,
        "pooled_eval_f1_micro": pooled_f1,
        "values": values,
        "per_label": per_label,
    }


def write_thresholds(run_path: str | os.PathLike, chosen: dict[str, Any]) -> None:
    atomic.write_json(os.path.join(run_path, THRESHOLDS_FILE), chosen)


def read_thresholds(run: Run) -> list[float]:
    path = run.path / THRESHOLDS_FILE
    if not path.is_file():
        raise TunelabError(f"multi-label run '{run.path}' has no {THRESHOLDS_FILE}", "train it again: the thresholds are chosen when it is trained")
    values = json.loads(path.read_text(encoding="utf-8"))["values"]
    if len(values) != len(run.labels):
        raise TunelabError(f"run '{run.path}' is inconsistent: {len(values)} thresholds for {len(run.labels)} labels", "train the run again")
    return [float(v) for v in values]


def label_sets(proba: np.ndarray, thresholds: Sequence[float], labels: Sequence[str]) -> list[list[dict[str, float | str]]]:
    """Per row, every label over its threshold with its probability, most probable first."""
    on = decide(proba, thresholds)
    out = []
    for row, flags in zip(proba, on):
        chosen = sorted(np.flatnonzero(flags), key=lambda j: -row[j])
        out.append([{"label": labels[j], "probability": float(row[j]), "threshold": float(thresholds[j])} for j in chosen])
    return out


@dataclass
class MultiLabelClassifier:
    """A fine-tuned multi-label run: a classifier's logits through a sigmoid, and the run's thresholds.

    The logits come from the shared Classifier (`load`: PyTorch) or from any backend's scorer
    (tunelab.runtime.choice.load_multilabel), so every backend decides with the same sigmoid and thresholds.
    """

    classifier: Any  # tunelab.models.classifier.Classifier, or a tunelab.runtime scorer (labels, logits, backend)
    thresholds: list[float]

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def backend(self) -> str:
        return getattr(self.classifier, "backend", "torch")

    @classmethod
    def load(cls, run: Run | str | os.PathLike) -> MultiLabelClassifier:
        from tunelab.models.classifier import Classifier

        run = run if isinstance(run, Run) else Run.open(run)
        if run.task != TASK:
            raise TunelabError(f"run '{run.path}' is a {run.task} run, not a multi-label one", "train one with --task multi-label")
        return cls(Classifier.load(run.model_dir, run.config.get("max_length")), read_thresholds(run))

    def logits(self, texts: Sequence[str], batch_size: int = 64, progress=None) -> np.ndarray:
        return self.classifier.logits(texts, batch_size, progress)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64, progress=None) -> np.ndarray:
        return sigmoid(self.logits(texts, batch_size, progress))

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """For each text: its labels (over their thresholds, with probabilities) and every label's probability."""
        proba = self.predict_proba(texts, batch_size)
        sets = label_sets(proba, self.thresholds, self.labels)
        return [{"labels": chosen, "probabilities": {label: float(p) for label, p in zip(self.labels, row)}} for chosen, row in zip(sets, proba)]
