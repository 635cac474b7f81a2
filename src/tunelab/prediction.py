"""Predictions from a finished run: labels and class probabilities for texts or a whole file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab import atomic
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.textpairs import PAIR_COLUMN, ModelInput, frame_inputs, is_pair

if TYPE_CHECKING:
    from tunelab.models.classifier import Classifier

# The heavy imports (torch, pandas) wait inside the functions until a prediction is asked for.


def load_classifier(run: Run | str | os.PathLike) -> Classifier:
    from tunelab.models.classifier import Classifier

    run = run if isinstance(run, Run) else Run.open(run)
    return Classifier.load(run.model_dir, run.config.get("max_length"))


def predict(run: Run | str | os.PathLike, texts: Sequence[ModelInput], batch_size: int = 64, backend: str = "torch") -> list[dict[str, Any]]:
    """For each text: the predicted label, its probability, and every class's probability.

    A pair-classification run takes (text, text_pair) pairs instead of texts.
    backend: one of tunelab.backends.CHOICES (tunelab.runtime.choice: exported on first use, parity-gated).
    A multi-label run (any backend) gives instead, for each text, `labels`: every label over its
    threshold with its probability and threshold (most probable first), and every label's probability.
    A token-classification run (any backend) gives `entities`: type, start, end
    (character offsets, end exclusive), text and score of each entity found.
    """
    if isinstance(texts, str):
        texts = [texts]
    run = run if isinstance(run, Run) else Run.open(run)
    check_inputs(run, texts)
    tagger = token_tagger(run, backend)
    if tagger is not None:
        return [{"entities": found} for found in tagger.entities(texts, batch_size)]
    multi_label = multilabel_classifier(run, backend)
    if multi_label is not None:
        return multi_label.predict(texts, batch_size)
    from tunelab.runtime import load_scorer

    run.require_classification("tunelab predict")  # an extractive-QA model would load with a random classifier head
    scorer = load_scorer(run, backend)
    return describe(scorer.labels, scorer.predict_proba(texts, batch_size))


def check_inputs(run: Run, inputs: Sequence[ModelInput]) -> None:
    """A pair-classification run takes only (text, text_pair) pairs, any other run only texts."""
    pairs = [is_pair(item) for item in inputs]
    if run.is_pair_classifier and not all(pairs):
        raise TunelabError(
            f"run '{run.path}' classifies text pairs; every input needs a text and a text_pair",
            "give the second texts with --pair (or --text-pair-col for a file), or [text, text_pair] pairs in Python",
        )
    if not run.is_pair_classifier and any(pairs):
        raise TunelabError(f"run '{run.path}' classifies single texts, not pairs ({run.task})", "give texts only")


def multilabel_classifier(run: Run, backend: str, threads: int | None = None):
    """The run's MultiLabelClassifier on `backend` (gated on its label sets: tunelab.runtime.choice.load_multilabel) when it is a multi-label run, else None."""
    from tunelab.models import multilabel
    from tunelab.runtime.choice import load_multilabel

    if run.task != multilabel.TASK:
        return None
    return load_multilabel(run, backend, threads)


def token_tagger(run: Run, backend: str, threads: int | None = None):
    """The run's TokenTagger on `backend` (gated as a classifier's: tunelab.runtime.choice.load_tagger) when it is a token-classification run, else None."""
    from tunelab.runtime import load_tagger
    from tunelab.runtime.tagger import TASK

    if run.task != TASK:
        return None
    return load_tagger(run, backend, threads)


def describe(labels: list[str], probabilities) -> list[dict[str, Any]]:
    results = []
    for row in probabilities:
        best = int(row.argmax())
        results.append({"label": labels[best], "score": float(row[best]), "probabilities": {label: float(p) for label, p in zip(labels, row)}})
    return results


def predict_file(
    run: Run | str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike,
    text_col: str = "text",
    encoding: str = "utf-8",
    batch_size: int = 64,
    progress=None,
    backend: str = "torch",
    threads: int | None = None,
    text_pair_col: str | None = None,
) -> Path:
    """Write `out` (CSV): the texts, the predicted label, and one probability column per class.

    A pair-classification run reads each row's second text from text_pair_col (default: the column
    the run was trained on) and writes it beside the first as `text_pair`.
    backend: one of tunelab.backends.CHOICES (tunelab.runtime.choice: exported on first use, parity-gated).
    """
    import pandas as pd

    from tunelab.data import load_source
    from tunelab.runtime import load_scorer

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise TunelabError(f"--out '{out}' must be a .csv file", "name the output file e.g. preds.csv")
    run = run if isinstance(run, Run) else Run.open(run)
    tagger = token_tagger(run, backend, threads)
    multi_label = multilabel_classifier(run, backend, threads)
    if tagger is None and multi_label is None:
        run.require_classification("tunelab predict")  # before the file is read
    if run.is_pair_classifier:
        text_pair_col = text_pair_col or run.config.get("text_pair_col") or PAIR_COLUMN
    elif text_pair_col is not None:
        raise TunelabError(f"--text-pair-col applies to pair-classification runs; '{run.path}' is a {run.task} run", "drop --text-pair-col")
    frame = load_source(source, text_col=text_col, label_col=None, encoding=encoding, text_pair_col=text_pair_col)
    if len(frame) == 0:
        raise TunelabError(f"{source} has no non-empty texts in column '{text_col}'", "check the file and --text-col")
    if tagger is not None:
        import json

        # One cell per row: its entities as a JSON list, as `tunelab predict --json` prints them.
        found = tagger.entities(frame["text"].tolist(), batch_size, progress)
        result = pd.DataFrame({"text": frame["text"], "entities": [json.dumps(row, ensure_ascii=False) for row in found]})
        return atomic.write_text(out, result.to_csv(index=False))
    scorer = multi_label if multi_label is not None else load_scorer(run, backend, threads)
    probabilities = scorer.predict_proba(frame_inputs(frame), batch_size, progress)
    if multi_label is not None:
        from tunelab.models.multilabel import label_sets

        # One cell per row: the labels over their thresholds, joined as the run's data joined them.
        separator = run.config.get("label_sep") or "|"
        chosen = [separator.join(item["label"] for item in row) for row in label_sets(probabilities, multi_label.thresholds, multi_label.labels)]
        result = pd.DataFrame({"text": frame["text"], "labels": chosen})
    else:
        result = frame[[c for c in ("text", PAIR_COLUMN) if c in frame]].copy()
        result["label"] = [scorer.labels[i] for i in probabilities.argmax(axis=1)]
    for index, label in enumerate(scorer.labels):
        result[f"prob_{label}"] = probabilities[:, index]
    return atomic.write_text(out, result.to_csv(index=False))
