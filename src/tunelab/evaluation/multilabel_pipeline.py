"""evaluate_multilabel_run: score a multi-label run on its test split (or other labelled data) and write the artefacts.

The steps of evaluate_run, for label sets: check the data, load the model and the thresholds chosen
on the eval split when it was trained (never re-chosen here), predict (timed), compute the metrics,
look for over-fitting, fit and score the TF-IDF one-vs-rest baseline on the same rows, plot, then
write predictions, report and metrics (metrics.json last).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from tunelab.data.multilabel import multi_hot
from tunelab.errors import TunelabError
from tunelab.evaluation.generalisation import generalisation_check
from tunelab.evaluation.multilabel_metrics import multilabel_metrics
from tunelab.evaluation.pipeline import MAX_MISTAKES, output_folder, timed_logits, wants_baseline, write_artefacts
from tunelab.models.multilabel import decide, sigmoid
from tunelab.run import Run
from tunelab.runtime.choice import load_multilabel

HEADLINE = ("loss", "subset_accuracy", "f1_micro", "f1_macro", "f1_samples")  # test figures metrics.json also holds at its top level


def evaluate_multilabel_run(
    run: Run | str | os.PathLike,
    data: pd.DataFrame | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    data_name: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    baseline: bool | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """Evaluate a multi-label run and write metrics.json, predictions.parquet, plots/ and report.html.

    data: a frame with `text` and `labels` (lists of label names; tunelab.data.multilabel reads
    one from a file); default: the run's test split. out_dir: default the run directory, where
    metrics.json is merged into. baseline: default the run's `baseline` setting. backend: one of
    tunelab.backends.CHOICES (tunelab.runtime.choice.load_multilabel: gated on its label sets), named in the
    timing. Returns metrics.json's content.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    labels = run.labels
    frame, source = (run.split("test"), "test split") if data is None else (data, data_name or "the given data")
    missing = [c for c in ("text", "labels") if c not in frame.columns]
    if missing:
        raise TunelabError(f"{source} has no {' or '.join(map(repr, missing))} column", "read it with tunelab.data.multilabel.load_multilabel_source")
    if len(frame) == 0:
        raise TunelabError(f"{source} has no rows to evaluate", "give data with text and label columns")
    y_true = multi_hot(frame["labels"], labels).astype(int)
    classifier = load_multilabel(run, backend)
    if classifier.labels != labels:
        raise TunelabError(f"run '{run.path}' is inconsistent: labels.json and the model's labels differ", "train the run again")
    texts = frame["text"].astype(str).tolist()
    logits, timing = timed_logits(classifier, texts, batch_size, progress)
    proba = sigmoid(logits)
    predicted = decide(proba, classifier.thresholds)

    test = multilabel_metrics(y_true, proba, classifier.thresholds, labels)
    test["timing"] = {**timing, "backend": classifier.backend}
    history = run.history()
    generalisation = generalisation_check(history)
    baseline_figures = None
    if wants_baseline(run, baseline):
        from tunelab.evaluation import multilabel_baseline

        baseline_figures, baseline_pred = multilabel_baseline.fit_and_score(run, texts, y_true, labels)
        if baseline_pred is not None:
            baseline_figures["comparison"] = multilabel_baseline.comparison(
                baseline_figures, test, y_true, predicted, baseline_pred, run.config, generalisation
            )

    from tunelab.evaluation.multilabel_plots import label_set_plots
    from tunelab.evaluation.multilabel_report import write_multilabel_report

    predictions = predictions_frame(texts, y_true, proba, predicted, labels)
    return write_artefacts(
        output_folder(run, out_dir),
        run,
        test=test,
        source=source,
        generalisation=generalisation,
        predictions=predictions,
        history=history,
        draw_plots=lambda folder: label_set_plots(folder, y_true, proba, labels, test),
        headline=HEADLINE,
        write=write_multilabel_report,
        mistakes=worst_rows(predictions),
        baseline=baseline_figures,
        thresholds=run.metrics.get("thresholds"),  # the record training wrote: where and how they were chosen
    )


def predictions_frame(texts: list[str], y_true: np.ndarray, proba: np.ndarray, predicted: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Per row: the true and predicted label sets, how many labels are wrong, and each label's probability."""
    names = np.asarray(labels, dtype=object)
    frame = pd.DataFrame(
        {
            "text": texts,
            "labels": [list(names[row.astype(bool)]) for row in y_true],
            "predicted": [list(names[row.astype(bool)]) for row in predicted],
            "wrong_labels": (y_true != predicted).sum(axis=1),
            "exact": (y_true == predicted).all(axis=1),
        }
    )
    for j, label in enumerate(labels):
        frame[f"prob_{label}"] = proba[:, j]
    return frame


def worst_rows(predictions: pd.DataFrame, limit: int = MAX_MISTAKES) -> list[dict[str, Any]]:
    """The rows with the most wrong labels."""
    wrong = predictions[~predictions["exact"]].sort_values("wrong_labels", ascending=False, kind="stable").head(limit)
    return wrong[["text", "labels", "predicted", "wrong_labels"]].to_dict("records")
