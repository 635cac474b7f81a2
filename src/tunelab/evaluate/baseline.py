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
from typing import Any

import numpy as np

from tunelab.answers import bootstrap_ci
from tunelab.evaluate.metrics import classification_metrics
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
        return _missing("this run is itself the tfidf-logreg baseline"), None
    if run.is_pair_classifier:
        # TF-IDF of two texts run together cannot compare them; the pair baseline (cosine of sentence
        # embeddings, its threshold chosen on the eval split) is benchmarks/pair_classification.py's.
        return _missing("TF-IDF + logistic regression does not compare the two texts of a pair; see benchmarks/pair_classification.py"), None
    splits = {}
    for name in ("train", "eval"):
        if not run.split_path(name).is_file():
            return _missing(f"the run has no saved {name} split (splits/{name}.parquet) to fit it on; runs trained by this tunelab version have one"), None
        splits[name] = run.split(name)
    index = {label: i for i, label in enumerate(labels)}
    y, texts_by_split = {}, {}
    for name, frame in splits.items():
        names = frame["label"].astype(str)
        unknown = sorted(set(names) - set(index))
        if unknown:
            return _missing(f"the {name} split has labels that labels.json does not: {', '.join(map(repr, unknown[:5]))}"), None
        y[name] = names.map(index).to_numpy(dtype=int)
        texts_by_split[name] = frame["text"].astype(str).tolist()
    seen = set(y["train"].tolist())
    absent = [label for label, i in index.items() if i not in seen]
    if absent:
        return _missing(f"the train split has no rows of {', '.join(map(repr, absent[:5]))}"), None

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
    n = len(model_correct)
    accuracy_points = 100 * (test["accuracy"] - figures["accuracy"])
    f1_points = 100 * (test["f1_macro"] - figures["f1_macro"])
    # Paired: each row's (model right) - (baseline right); the mean is the accuracy gap.
    difference = model_correct.astype(float) - baseline_correct.astype(float)
    resamples = max(50, min(BOOTSTRAP_RESAMPLES, BOOTSTRAP_CELLS // max(n, 1)))
    low, high = (100 * v for v in bootstrap_ci(difference, resamples=resamples, seed=0))
    within_noise = low <= 0 <= high
    beats = accuracy_points > 0 and f1_points > 0
    model = "The fine-tuned model" if config.get("kind", "transformers") == "transformers" else f"This {config.get('method', 'model')} model"
    figures_text = (
        f"accuracy {test['accuracy']:.1%} vs {figures['accuracy']:.1%} ({accuracy_points:+.1f} points), "
        f"macro-F1 {test['f1_macro']:.3f} vs {figures['f1_macro']:.3f} ({f1_points:+.1f} points), on the same {n} test rows"
    )
    interval = f"paired bootstrap 95% interval of the accuracy gap: {low:+.1f} to {high:+.1f} points"
    if beats:
        noise = f"within noise ({interval}): {n} rows cannot tell the two apart" if within_noise else f"larger than noise ({interval})"
        headline = f"{model} beats the {DESCRIPTION} baseline: {figures_text}; the gap is {noise}."
    else:
        noise = (
            f"The gap is within noise ({interval}): on {n} rows the two cannot be told apart, and the baseline is far cheaper."
            if within_noise
            else f"The gap is larger than noise ({interval})."
        )
        headline = f"{model} does not beat the {DESCRIPTION} baseline: {figures_text}. {noise}"
    return {
        "beats_baseline": beats,
        "accuracy_points": accuracy_points,
        "f1_macro_points": f1_points,
        "accuracy_points_ci95": [low, high],
        "bootstrap_resamples": resamples,
        "within_noise": within_noise,
        "headline": headline,
        "advice": [] if beats else advice(figures, config, generalisation or {}),
    }


def advice(figures: dict[str, Any], config: dict[str, Any], generalisation: dict[str, Any]) -> list[str]:
    """What to try when the model does not beat the baseline, with this run's own numbers."""
    tips = [f"more training data: this run trained on {figures['train_rows']} rows (on a few hundred rows this baseline often wins)"]
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


def _missing(reason: str) -> dict[str, Any]:
    return {"name": NAME, "description": DESCRIPTION, "missing": reason}
