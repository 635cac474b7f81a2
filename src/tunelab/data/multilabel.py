"""Multi-label data: label sets read from a list column or a delimited string, split, made multi-hot.

A row's labels are a set of label names. They come as a list (a JSON array in JSONL/JSON, a list
column in Parquet or a save_to_disk folder), or as one string split on `label_sep` ("a|b"). A
string without `label_sep` is refused: it is a single label, and reading it as a set of one would
hide a forgotten --label-sep. An empty list is a row with no label (a negative for every label);
a missing value (null, an empty CSV cell) drops the row, as in single-label data.

Frames here have columns `text` and `labels` (a sorted list of label names).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from tunelab.data.load import drop_missing, is_missing, read_raw, require_columns
from tunelab.data.split import check_labels_trained, hold_out_texts, load_and_split, splits_needed
from tunelab.errors import TunelabError

# Separators `tunelab data inspect` tries on a string label column, and the share of rows that must
# hold one before the column is called delimited.
SEPARATORS = ("|", ";", ",")
DELIMITED_SHARE = 0.2
# A label of more than this many words is not a tag: a comma inside a sentence is not a separator.
MAX_LABEL_WORDS = 4


def load_multilabel_source(
    source: str | os.PathLike,
    text_col: str = "text",
    label_col: str = "labels",
    label_sep: str | None = None,
    encoding: str = "utf-8",
    strict: bool = False,
    delimiter: str | None = None,
) -> pd.DataFrame:
    """`source` as a frame of `text` and `labels`; rows with an empty text or a missing label set
    are dropped and counted in attrs["dropped"] (refused with `strict`)."""
    raw = read_raw(source, encoding, delimiter)
    name = str(source)
    raw.columns = [str(c) for c in raw.columns]
    require_columns(raw, name, {"text": text_col, "label": label_col})
    sets = [parse_label_set(value, label_sep, name, row) for row, value in enumerate(raw[label_col], start=1)]
    frame = drop_missing(pd.DataFrame({"text": raw[text_col], "labels": sets}), name, strict, label_col="labels")
    if len(frame) and not any(len(labels) for labels in frame["labels"]):
        raise TunelabError(
            f"label column '{label_col}' of {name} holds no labels: every row's label set is empty",
            "check --label-col (and --label-sep), or fill in the labels",
        )
    return frame


def parse_label_set(value: Any, label_sep: str | None, source: str = "the data", row: int | None = None) -> list[str] | None:
    """One cell as a sorted list of distinct label names; None for a missing value."""
    where = f"{source}, row {row}" if row is not None else source
    if is_missing(value):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    elif isinstance(value, str) and label_sep is not None:
        items = value.split(label_sep)
    else:
        shown = repr(value)[:60]
        if isinstance(value, str):
            raise TunelabError(
                f"{where}: the label value {shown} is a string, not a list of labels",
                "pass --label-sep with the character between its labels (e.g. --label-sep '|'), or write the labels as a JSON list",
            )
        raise TunelabError(f"{where}: the label value {shown} is not a list of labels", 'write the labels as a list, e.g. ["sports", "politics"]')
    names = set()
    for item in items:
        if isinstance(item, (list, tuple, dict, np.ndarray)):
            raise TunelabError(f"{where}: the label set holds {type(item).__name__} {repr(item)[:40]}, not a label name", "use a flat list of label names")
        if is_missing(item):
            continue
        text = str(int(item)) if isinstance(item, float) and item.is_integer() else str(item).strip()
        if text:
            names.add(text)
    return sorted(names)


def label_vocabulary(frames: Sequence[pd.DataFrame]) -> list[str]:
    """Every label name that occurs in the frames, sorted: the model's outputs in id order."""
    return sorted({label for frame in frames for labels in frame["labels"] for label in labels})


def multi_hot(label_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> np.ndarray:
    """(rows, labels) 0/1 matrix; a name outside `labels` is a user error naming it."""
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(label_sets), len(labels)), dtype=np.float32)
    unknown: Counter[str] = Counter()
    for row, names in enumerate(label_sets):
        for name in names:
            if name in index:
                out[row, index[name]] = 1.0
            else:
                unknown[name] += 1
    if unknown:
        shown = ", ".join(f"'{name}' ({n} rows)" for name, n in unknown.most_common(5))
        raise TunelabError(f"labels the model was not trained on: {shown}; it knows: {', '.join(labels)}", "use the run's label names, or drop those labels")
    return out


def label_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Rows holding each label, most frequent first."""
    counts = Counter(label for labels in frame["labels"] for label in labels)
    return dict(counts.most_common())


# -- splits -------------------------------------------------------------------------------------


def load_multilabel_splits(settings) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The train/eval/test splits a MultiLabelConfig describes, and the rows dropped while loading."""

    def read(source: str) -> pd.DataFrame:
        return load_multilabel_source(source, settings.text_col, settings.label_col, settings.label_sep, settings.encoding, settings.strict, settings.delimiter)

    return load_and_split(settings, read, partial(make_multilabel_splits, max_train_samples=settings.max_train_samples))


def make_multilabel_splits(
    frame: pd.DataFrame,
    eval_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    eval_frame: pd.DataFrame | None = None,
    test_frame: pd.DataFrame | None = None,
    max_train_samples: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Seeded train/eval/test splits; user-given splits win.

    Rows are stratified by their rarest label (the usual cheap stand-in for iterative
    stratification), so a rare label reaches eval, where its threshold is chosen, and test. A text
    that repeats stays in one split. Every label must have enough distinct texts to reach each split.
    """
    source = frame.attrs.get("source", "the data")
    firsts = frame.drop_duplicates("text").reset_index(drop=True)
    if len(firsts) == 0:
        raise TunelabError(f"{source} has no usable rows", "check the file and the --text-col/--label-col choice")
    counts = label_counts(firsts)
    needed = splits_needed(eval_frame, test_frame)
    too_few = {label: n for label, n in counts.items() if n < needed}
    if too_few:
        shown = ", ".join(f"'{label}' ({n})" for label, n in list(too_few.items())[:5])
        raise TunelabError(
            f"labels with too few rows (distinct texts) to reach every split: {shown}; each needs at least {needed}",
            "add rows with those labels, remove the labels, or pass --eval-data/--test-data",
        )

    splits = hold_out_texts(
        frame, firsts, {"eval": eval_fraction, "test": test_fraction}, seed, {"eval": eval_frame, "test": test_frame}, 1, rarest_label_strata
    )
    if max_train_samples is not None and max_train_samples < len(splits["train"]):
        splits["train"] = splits["train"].sample(n=max_train_samples, random_state=seed).reset_index(drop=True)
    check_labels_trained(
        splits,
        lambda frame: set(label_counts(frame)),
        "add training rows with them (a label whose few rows all went to eval and test needs more rows, or another --seed), or remove them from the {file} file",
    )
    return {name: splits[name] for name in ("train", "eval", "test")}


def rarest_label_strata(frame: pd.DataFrame, share: float) -> np.ndarray | None:
    """Each row's rarest label (by its count in `frame`) as its stratum; strata too small to split
    join one "rare" stratum; None (a plain shuffle) when even that cannot be split."""
    counts = label_counts(frame)
    strata = np.array([min(labels, key=lambda label: (counts[label], label)) if len(labels) else "" for labels in frame["labels"]], dtype=object)
    sizes = Counter(strata)
    strata = np.array([s if sizes[s] >= 2 else "\x00rare" for s in strata], dtype=object)
    sizes = Counter(strata)
    held = share * len(frame)
    if min(sizes.values()) < 2 or len(sizes) > held or len(sizes) > len(frame) - held:
        return None
    return strata


# -- detection (`tunelab data inspect`) ----------------------------------------------------------


def detect_label_sets(values: pd.Series) -> dict[str, Any] | None:
    """How a label column looks multi-label, or None: {"format": "list"} when its values are lists,
    {"format": "delimited", "separator": s} when a separator splits many of them into short tags."""
    present = values.dropna()
    if len(present) == 0:
        return None
    if present.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).mean() > 0.5:
        return {"format": "list"}
    texts = present.astype(str)
    for separator in SEPARATORS:
        split = texts[texts.str.contains(separator, regex=False)]
        if len(split) < max(2, DELIMITED_SHARE * len(texts)):
            continue
        parts = [part.strip() for text in split for part in text.split(separator)]
        # Short parts, some of them repeated: tags, not sentences that happen to hold a comma.
        if all(0 < len(part.split()) <= MAX_LABEL_WORDS for part in parts) and len(set(parts)) < len(parts):
            return {"format": "delimited", "separator": separator}
    return None


# -- profile -----------------------------------------------------------------------------------


def profile_label_sets(
    splits: dict[str, pd.DataFrame], tokenizer=None, model_limit: int | None = None, dropped: dict[str, int] | None = None
) -> dict[str, Any]:
    """The data profile (tunelab.data.profile) with label counts in place of class counts, and labels per row."""
    from tunelab.data.profile import profile_splits

    # One placeholder class: the profile's token lengths, duplicates and overlaps apply as they are.
    profile = profile_splits({name: frame.assign(label="") for name, frame in splits.items()}, tokenizer, model_limit, dropped)
    for name, frame in splits.items():
        entry = profile["splits"][name]
        entry.pop("class_counts", None)
        entry["label_counts"] = label_counts(frame)
        entry["labels_per_row"] = float(frame["labels"].map(len).mean()) if len(frame) else 0.0
        entry["rows_without_labels"] = int((frame["labels"].map(len) == 0).sum())
    return profile
