"""evaluate_token_run: score a token-classification run on its test split (or other tagged data) and write the artefacts.

The steps of evaluate_run, for tagged words: load the tagger on the backend asked for (runtime/choice.py's
`load_tagger`: any backend, behind the word-tag parity gate), tag every sentence's words (timed),
compute the entity-level metrics and the tag confusion matrix, look for over-fitting, score the
gazetteer baseline on the same rows, plot, then write predictions, report and metrics (metrics.json last).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunelab.errors import TunelabError
from tunelab.evaluation.generalisation import generalisation_check
from tunelab.evaluation.pipeline import MAX_MISTAKES, output_folder, wants_baseline, write_artefacts
from tunelab.evaluation.token_metrics import token_metrics
from tunelab.progress import progress_bar
from tunelab.run import Run
from tunelab.runtime.choice import load_tagger

HEADLINE = ("f1_micro", "precision_micro", "recall_micro", "f1_macro", "word_accuracy")  # test figures metrics.json also holds at its top level


def evaluate_token_run(
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
    """Evaluate a token-classification run and write metrics.json, predictions.parquet, plots/ and report.html.

    data: tagged sentences (tunelab.data.token_tags.load_tagged reads a file); default: the run's test
    split. out_dir: default the run directory, where metrics.json is merged into. baseline: default the
    run's `baseline` setting. backend: one of tunelab.backends.CHOICES; the metrics are computed from its
    word tags by the same code as torch's, and the timing names it. Returns metrics.json's content.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    tags = run.labels
    frame, source = (run.split("test"), "test split") if data is None else (data, data_name or "the given data")
    if "words" not in frame.columns or "tags" not in frame.columns:
        raise TunelabError(f"{source} has no tagged words", "read it with tunelab.data.token_tags.load_tagged")
    if len(frame) == 0:
        raise TunelabError(f"{source} has no sentences to evaluate", "give tagged data")
    unknown = sorted({tag for sentence in frame["tags"] for tag in sentence} - set(tags))
    if unknown:
        raise TunelabError(f"{source} has tags the model was not trained on: {', '.join(unknown[:5])}", f"use the run's tags: {', '.join(tags)}")
    tagger = load_tagger(run, backend)
    sentences = [list(words) for words in frame["words"]]
    true_tags = [list(sentence) for sentence in frame["tags"]]
    with progress_bar(progress) as bar:
        task = bar.add_task("tagging", total=len(sentences)) if progress else None
        started = time.perf_counter()
        predicted, _ = tagger.word_tags(sentences, batch_size, (lambda n: bar.advance(task, n)) if progress else None)
        seconds = time.perf_counter() - started

    test = token_metrics(true_tags, predicted, tags)
    test["timing"] = {
        "examples": len(sentences),
        "seconds": seconds,
        "examples_per_second": len(sentences) / seconds if seconds > 0 else None,
        "backend": tagger.backend,
    }
    history = run.history()
    baseline_figures = None
    if wants_baseline(run, baseline):
        from tunelab.evaluation.token_baseline import score_baseline

        baseline_figures = score_baseline(run.split("train"), sentences, true_tags, test)
    from tunelab.evaluation.token_report import write_token_report

    predictions = predictions_frame(frame, predicted)
    return write_artefacts(
        output_folder(run, out_dir),
        run,
        test=test,
        source=source,
        generalisation=generalisation_check(history),
        predictions=predictions,
        history=history,
        draw_plots=lambda folder: {"confusion_matrix": tag_confusion_plot(test["confusion_matrix"], folder / "confusion_matrix.png")},
        headline=HEADLINE,
        write=write_token_report,
        mistakes=worst_rows(predictions),
        baseline=baseline_figures,
    )


def tag_confusion_plot(confusion: dict[str, Any], path: Path) -> Path:
    """The tag confusion matrix, each row coloured by its share of the true tag's words."""
    from tunelab.evaluation.plots import confusion_matrix_plot

    counts = np.asarray(confusion["counts"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return confusion_matrix_plot(confusion["counts"], np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0), confusion["tags"], path)


def predictions_frame(frame: pd.DataFrame, predicted: list[list[str]]) -> pd.DataFrame:
    """Per sentence: the text, words, true and predicted tags, and how many words are wrong."""
    wrong = [sum(t != p for t, p in zip(true, guess)) for true, guess in zip(frame["tags"], predicted)]
    return pd.DataFrame(
        {
            "text": frame["text"].tolist(),
            "words": frame["words"].map(list).tolist(),
            "tags": frame["tags"].map(list).tolist(),
            "predicted": predicted,
            "wrong_words": wrong,
        }
    )


def worst_rows(predictions: pd.DataFrame, limit: int = MAX_MISTAKES) -> list[dict[str, Any]]:
    """The sentences with the most wrongly tagged words, each wrong word shown as word (true → predicted)."""
    rows = predictions[predictions["wrong_words"] > 0].sort_values("wrong_words", ascending=False, kind="stable").head(limit)
    shown = []
    for row in rows.itertuples():
        errors = [f"{w} ({t} → {p})" for w, t, p in zip(row.words, row.tags, row.predicted) if t != p]
        shown.append({"text": row.text, "errors": errors, "wrong_words": row.wrong_words})
    return shown
