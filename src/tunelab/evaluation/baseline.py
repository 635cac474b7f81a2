"""The baseline every evaluation shows: TF-IDF word 1-2-grams + logistic regression (`tfidf-logreg`).

It is fitted on the run's own train split (C chosen on its eval split, as `tunelab compare`'s
candidate does: both fit through tunelab.models.linear) and scored on exactly the rows the model is scored
on, so the two numbers differ only by the model. Issue 20 found this baseline beating the default
fine-tune at ~550 training rows; a report that did not say so would let a worse model look fine.

This module decides which rows the baseline sees and what the comparison says; the headline and the
advice are written into metrics.json, so the HTML report and the CLI print the same sentences.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunelab.answers import bootstrap_ci
from tunelab.config import SMALL_DATA_ROWS
from tunelab.evaluation.metrics import classification_metrics
from tunelab.run import Run

NAME = "tfidf-logreg"
DESCRIPTION = "TF-IDF (word 1-2-grams) + logistic regression"
# bootstrap_ci draws resamples x rows indices at once: cap that at ~20M (160 MB) on very large test sets.
BOOTSTRAP_CELLS = 20_000_000
BOOTSTRAP_RESAMPLES = 1000


def fit_and_score(run: Run, texts: list[str], y_true: np.ndarray, labels: list[str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """The baseline's figures on `texts` (the rows the model is scored on), and its per-row correctness.

    When the run cannot give the baseline a train split, the figures say why instead (`missing`)
    and the correctness is None: a missing baseline never fails an evaluation.
    """
    if run.kind == "sklearn" and run.config.get("method") == NAME:
        return missing_baseline("this run is itself the tfidf-logreg baseline"), None
    if run.is_pair_classifier:
        # TF-IDF of two texts run together cannot compare them; the pair baseline (cosine of sentence
        # embeddings, its threshold chosen on the eval split) is benchmarks/pair_classification.py's.
        return missing_baseline("TF-IDF + logistic regression does not compare the two texts of a pair; see benchmarks/pair_classification.py"), None
    splits, absent_split = fitting_splits(run)
    if absent_split:
        return missing_baseline(absent_split), None
    index = {label: i for i, label in enumerate(labels)}
    y, texts_by_split = {}, {}
    for name, frame in splits.items():
        names = frame["label"].astype(str)
        unknown = sorted(set(names) - set(index))
        if unknown:
            return missing_baseline(f"the {name} split has labels that labels.json does not: {', '.join(map(repr, unknown[:5]))}"), None
        y[name] = names.map(index).to_numpy(dtype=int)
        texts_by_split[name] = frame["text"].astype(str).tolist()
    seen = set(y["train"].tolist())
    absent = [label for label, i in index.items() if i not in seen]
    if absent:
        return missing_baseline(f"the train split has no rows of {', '.join(map(repr, absent[:5]))}"), None

    from tunelab.models.linear import fit_tfidf_logreg  # scikit-learn: imported when a baseline is fitted

    started = time.perf_counter()
    classifier, chosen_c = fit_tfidf_logreg(texts_by_split, y, labels, seed=int(run.config.get("seed", 42)))
    fit_seconds = time.perf_counter() - started
    proba = classifier.predict_proba(texts)
    scores = classification_metrics(y_true, proba, labels)
    figures = {
        "name": NAME,
        "description": DESCRIPTION,
        "accuracy": scores["accuracy"],
        "f1_macro": scores["f1_macro"],
        "fit_seconds": fit_seconds,
        "train_rows": len(texts_by_split["train"]),
        "test_rows": len(texts),
        "C": chosen_c,
        "C_chosen_on": f"the run's eval split ({len(texts_by_split['eval'])} rows)",
    }
    return figures, proba.argmax(axis=1) == y_true


def fitting_splits(run: Run) -> tuple[dict[str, Any], str | None]:
    """The run's train split (to fit on) and eval split (to choose C on); or why the run has none."""
    splits = {}
    for name in ("train", "eval"):
        if not run.split_path(name).is_file():
            return {}, f"the run has no saved {name} split (splits/{name}.parquet) to fit it on; runs trained by this tunelab version have one"
        splits[name] = run.split(name)
    return splits, None


def comparison(
    figures: dict[str, Any],
    test: dict[str, Any],
    model_correct: np.ndarray,
    baseline_correct: np.ndarray,
    config: dict[str, Any],
    generalisation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model against the baseline on the same rows: gaps in points, whether the accuracy gap is
    within noise (paired bootstrap over the rows), the headline sentence and what to try."""
    shown = (("accuracy", "accuracy", ".1%"), ("f1_macro", "macro-F1", ".3f"))
    # Paired: each row's (model right) - (baseline right); the mean is the accuracy gap.
    result = versus(config, DESCRIPTION, test, figures, shown, model_correct.astype(float) - baseline_correct.astype(float), "accuracy", "the accuracy gap")
    return {**result, "advice": [] if result["beats_baseline"] else advice(figures, config, generalisation or {})}


def versus(
    config: dict[str, Any],
    description: str,
    test: dict[str, Any],
    figures: dict[str, Any],
    shown: Sequence[tuple[str, str, str]],
    difference: np.ndarray,
    gap_key: str,
    gap_name: str,
) -> dict[str, Any]:
    """The model's test figures against the baseline's on the same rows: each `shown` (key, name, format)
    figure's gap in points (the model beats the baseline when every one is positive), the paired bootstrap
    interval of the per-row `difference` (its mean is the `gap_key` gap) and the headline; the figures of
    metrics.json["baseline"]["comparison"] but the advice."""
    points = {key: 100 * (test[key] - figures[key]) for key in [key for key, _, _ in shown] + [gap_key]}
    low, high, resamples = paired_interval(difference)
    within_noise = low <= 0 <= high
    beats = all(points[key] > 0 for key, _, _ in shown)
    figures_text = ", ".join(f"{name} {test[key]:{fmt}} vs {figures[key]:{fmt}} ({points[key]:+.1f} points)" for key, name, fmt in shown)
    figures_text += f", on the same {len(difference)} test rows"
    interval = f"paired bootstrap 95% interval of {gap_name}: {low:+.1f} to {high:+.1f} points"
    return {
        "beats_baseline": beats,
        **{f"{key}_points": value for key, value in points.items()},
        f"{gap_key}_points_ci95": [low, high],
        "bootstrap_resamples": resamples,
        "within_noise": within_noise,
        "headline": verdict(config, description, figures_text, interval, len(difference), beats, within_noise),
    }


def verdict(config: dict[str, Any], description: str, figures_text: str, interval: str, rows: int, beats: bool, within_noise: bool) -> str:
    """The comparison's headline: whether the model beats the baseline, with the figures, and whether the gap is within noise."""
    model = "The fine-tuned model" if config.get("kind", "transformers") == "transformers" else f"This {config.get('method', 'model')} model"
    if beats:
        noise = f"within noise ({interval}): {rows} rows cannot tell the two apart" if within_noise else f"larger than noise ({interval})"
        return f"{model} beats the {description} baseline: {figures_text}; the gap is {noise}."
    noise = (
        f"The gap is within noise ({interval}): on {rows} rows the two cannot be told apart, and the baseline is far cheaper."
        if within_noise
        else f"The gap is larger than noise ({interval})."
    )
    return f"{model} does not beat the {description} baseline: {figures_text}. {noise}"


def paired_interval(difference: np.ndarray) -> tuple[float, float, int]:
    """The paired bootstrap 95% interval of a per-row gap (model - baseline, over the same rows), in
    points, and how many resamples it drew (fewer on very large test sets: BOOTSTRAP_CELLS)."""
    resamples = max(50, min(BOOTSTRAP_RESAMPLES, BOOTSTRAP_CELLS // max(len(difference), 1)))
    low, high = (100 * v for v in bootstrap_ci(difference, resamples=resamples, seed=0))
    return low, high, resamples


def advice(figures: dict[str, Any], config: dict[str, Any], generalisation: dict[str, Any]) -> list[str]:
    """What to try when the model does not beat the baseline, with this run's own numbers."""
    rows = figures["train_rows"]
    # The reason is given only where it holds: below the small-data line the baseline often wins (benchmarks/small_data.py).
    why = " (on a few hundred rows this baseline often wins)" if rows < SMALL_DATA_ROWS else ""
    tips = [f"more training data: this run trained on {rows} rows{why}"]
    if config.get("kind", "transformers") == "transformers":
        epochs, lr = config.get("epochs"), config.get("lr")
        epochs = f"{epochs:g}" if isinstance(epochs, (int, float)) else "?"
        lr = f"{lr:g}" if isinstance(lr, (int, float)) else "?"
        if generalisation.get("verdict") == "overfitting":
            tips.append(f"fewer epochs or --early-stopping 1 (this run: {epochs} epochs; the generalisation check flags over-fitting)")
            tips.append(f"a smaller learning rate (this run: {lr})")
        else:
            tips.append(f"more epochs (this run: {epochs})")
            tips.append(f"a learning-rate search around this run's {lr} (a `tunelab compare` candidate with search: {{lr: [...]}})")
    tips.append("the baseline itself: a compare file with the candidate {method: tfidf-logreg} makes it a run of its own (`tunelab compare`)")
    return tips


def missing_baseline(reason: str, name: str = NAME, description: str = DESCRIPTION) -> dict[str, Any]:
    """A baseline's figures when it could not be fitted: why."""
    return {"name": name, "description": description, "missing": reason}
