"""The multi-label baseline every multi-label evaluation shows: TF-IDF + one-vs-rest logistic regression.

Fitted on the run's train split, its C and per-label thresholds chosen on the run's eval split by
the rule the fine-tuned model's thresholds follow (tunelab.models.linear.fit_tfidf_ovr), and
scored on exactly the rows the model is scored on. The verdict, its interval and the advice are
written into metrics.json["baseline"], so the report and the CLI print the same sentences.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tunelab.data.multilabel import multi_hot
from tunelab.errors import TunelabError
from tunelab.evaluation.baseline import advice, fitting_splits, missing_baseline, versus
from tunelab.evaluation.multilabel_metrics import multilabel_metrics
from tunelab.models.multilabel import decide
from tunelab.run import Run

NAME = "tfidf-ovr-logreg"
DESCRIPTION = "TF-IDF (word 1-2-grams) + one-vs-rest logistic regression"


def fit_and_score(run: Run, texts: list[str], y_true: np.ndarray, labels: list[str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """The baseline's figures on `texts`, and its 0/1 predictions (None when it could not be fitted: `missing` says why)."""
    splits, absent_split = fitting_splits(run)
    if absent_split:
        return missing_baseline(absent_split, NAME, DESCRIPTION), None
    y = {}
    for name in splits:
        try:
            y[name] = multi_hot(splits[name]["labels"], labels)
        except TunelabError as error:
            return missing_baseline(f"the {name} split does not match labels.json ({error.message})", NAME, DESCRIPTION), None
    from tunelab.models.linear import fit_tfidf_ovr  # scikit-learn: imported when a baseline is fitted

    started = time.perf_counter()
    texts_by_split = {name: frame["text"].astype(str).tolist() for name, frame in splits.items()}
    pipeline, chosen_c, thresholds = fit_tfidf_ovr(texts_by_split, y, labels, seed=int(run.config.get("seed", 42)))
    fit_seconds = time.perf_counter() - started
    proba = pipeline.predict_proba(texts)
    scores = multilabel_metrics(y_true, proba, thresholds["values"], labels)
    figures = {
        "name": NAME,
        "description": DESCRIPTION,
        "f1_micro": scores["f1_micro"],
        "f1_macro": scores["f1_macro"],
        "f1_samples": scores["f1_samples"],
        "subset_accuracy": scores["subset_accuracy"],
        "roc_auc_macro": scores["roc_auc"]["macro"],
        "fit_seconds": fit_seconds,
        "train_rows": len(texts_by_split["train"]),
        "test_rows": len(texts),
        "C": chosen_c,
        "C_chosen_on": thresholds["chosen_on"],
        "thresholds_chosen_on": thresholds["chosen_on"],
    }
    return figures, decide(proba, thresholds["values"])


def row_f1(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each row's F1 between its true and predicted label sets; their mean is scikit-learn's samples-F1 (0 for two empty sets)."""
    tp = (y_true * y_pred).sum(axis=1)
    wrong = (y_true != y_pred).sum(axis=1)
    return np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(len(y_true)), where=(2 * tp + wrong) > 0)


def comparison(
    figures: dict[str, Any], test: dict[str, Any], y_true: np.ndarray, model_pred: np.ndarray, baseline_pred: np.ndarray, config, generalisation
) -> dict[str, Any]:
    """The model against the baseline on the same rows: micro/macro-F1 gaps in points, a paired
    bootstrap interval of the samples-F1 gap (per-row F1s are what a row-resample can pair), the headline and the advice."""
    shown = (("f1_micro", "micro-F1", ".3f"), ("f1_macro", "macro-F1", ".3f"))
    samples_points = 100 * (test["f1_samples"] - figures["f1_samples"])
    gap_name = f"the samples-F1 gap ({samples_points:+.1f} points)"
    result = versus(config, DESCRIPTION, test, figures, shown, row_f1(y_true, model_pred) - row_f1(y_true, baseline_pred), "f1_samples", gap_name)
    return {
        **result,
        # `tunelab compare` takes no multi-label runs yet: its tips do not apply.
        "advice": [] if result["beats_baseline"] else [tip for tip in advice(figures, config, generalisation or {}) if "compare" not in tip],
    }
