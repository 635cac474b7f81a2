"""`tunelab data inspect`: the profile of a data source before any training."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from tunelab.config import SMALL_DATA_ROWS, DataSettings, TrainConfig, describe_recipe, resolve_recipe
from tunelab.data import load_source, make_splits, profile_splits
from tunelab.errors import TunelabError
from tunelab.models.catalogue import resolve_model


def inspect_source(
    source: str,
    text_col: str = "text",
    label_col: str = "label",
    model: str | None = "minilm",
    test_data: str | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    text_pair_col: str | None = None,
) -> dict[str, Any]:
    """Rows, class balance, token-length percentiles, empty and duplicate rows, warnings; and the
    likely task: multi-label when the label column holds lists or delimited strings, pair
    classification when two columns look like text pairs (those two are then profiled as pairs).
    Tagged words (a CoNLL/IOB file, tokens and tags, text and spans) get the token-classification
    profile (inspect_tagged)."""
    from tunelab.data.load import read_raw

    tagged = inspect_tagged(source, model, encoding, delimiter)
    if tagged is not None:
        return tagged
    raw = read_raw(source, encoding, delimiter)
    multi_label = detect_multilabel(raw, label_col)
    text_pair = None if text_pair_col else detect_text_pair([str(c) for c in raw.columns], text_col)
    if text_pair:
        text_col, text_pair_col = text_pair["text_col"], text_pair["text_pair_col"]
    frame = load_source(source, text_col, label_col, encoding, delimiter=delimiter, text_pair_col=text_pair_col)
    tokenizer, limit = model_tokenizer(model)
    splits = {"all": frame}
    if test_data:
        # Named "train" so the profile's overlap check compares the test file against it.
        splits = {"train": frame, "test": load_source(test_data, text_col, label_col, encoding, delimiter=delimiter, text_pair_col=text_pair_col)}
    profile = profile_splits(splits, tokenizer, limit, frame.attrs.get("dropped"))
    first = profile["splits"][next(iter(splits))]
    profile.update(
        rows=first["rows"],
        class_counts=first["class_counts"],
        duplicate_texts=first["duplicate_texts"],
        token_length=first.get("token_length", {}),
        train_rows=training_rows(frame, splits.get("test")),
    )
    # What `tunelab train` with its defaults (recipe: auto) would train these rows with.
    # make_splits keeps the rows of one first text together, so pairs are counted as train would split them.
    profile["recipe"] = describe_recipe(resolve_recipe(TrainConfig(), profile["train_rows"]))
    # Below SMALL_DATA_ROWS a TF-IDF baseline can beat fine-tuning: issue 20 found it winning at ~550 training rows.
    if profile["train_rows"] < SMALL_DATA_ROWS:
        profile["warnings"].insert(0, small_data_warning(profile["train_rows"], len(frame), profile["recipe"], test_data is not None))
    profile["likely_task"] = "multi-label" if multi_label else "pair-classification" if text_pair_col else "classification"
    if multi_label:
        profile["multi_label"] = multi_label
        profile["warnings"].insert(0, multi_label["advice"])
    if text_pair_col:
        profile["text_pair"] = text_pair or {"text_col": text_col, "text_pair_col": text_pair_col}
    return profile


def inspect_tagged(source: str, model: str | None = "minilm", encoding: str = "utf-8", delimiter: str | None = None) -> dict[str, Any] | None:
    """The profile of tagged words, when the source holds them (tunelab.data.token_tags.looks_tagged), else None:
    sentences, entities per type (as `class_counts`), token lengths, and the advice to train with --task token-classification."""
    from tunelab.data.token_tags import load_tagged, looks_tagged, profile_tagged, tagged_source

    shape = looks_tagged(source, encoding, delimiter=delimiter)
    if shape is None:
        return None
    frame = tagged_source(source) if shape == "built-in" else load_tagged(source, encoding=encoding)
    tokenizer, limit = model_tokenizer(model)
    profile = profile_tagged({"all": frame}, tokenizer, limit)
    first = profile["splits"]["all"]
    advice = f"{source} holds tagged words ({shape}, {sum(first['entity_counts'].values())} entities): train with --task token-classification"
    profile.update(
        rows=first["rows"],
        class_counts=first["entity_counts"],
        duplicate_texts=int(frame["text"].duplicated().sum()),
        token_length=first.get("token_length", {}),
        dropped={},
        train_rows=len(frame),
        recipe="token classification (a tag per word on its first word piece)",
        likely_task="token-classification",
    )
    profile["warnings"].insert(0, advice)
    return profile


def model_tokenizer(model: str | None) -> tuple[Any, int | None]:
    """The model's tokenizer and its token limit, which the profile's token lengths are measured with; (None, None) without a model."""
    if not model:
        return None, None
    from transformers import AutoConfig, AutoTokenizer

    from tunelab.models.classifier import model_max_length

    folder = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, model_max_length(AutoConfig.from_pretrained(folder), tokenizer)


# Column names that hold two texts classified together (NLI, paraphrase, question–passage relevance):
# (first text, second text), in the order they are tried.
TEXT_PAIR_COLUMNS = (
    ("premise", "hypothesis"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("text_a", "text_b"),
    ("question", "passage"),
    ("query", "passage"),
    ("text", "text_pair"),
)


def detect_text_pair(columns: list[str], text_col: str) -> dict[str, str] | None:
    """The first TEXT_PAIR_COLUMNS pair present among `columns` whose first column is the text column
    (or replaces a text column the source lacks), with the command that trains on it; else None."""
    present = set(columns)
    for first, second in TEXT_PAIR_COLUMNS:
        if first in present and second in present and (first == text_col or text_col not in present):
            return {
                "text_col": first,
                "text_pair_col": second,
                "advice": f"columns '{first}' and '{second}' look like text pairs: train with --task pair-classification "
                f"--text-col {first} --text-pair-col {second}",
            }
    return None


def detect_multilabel(raw: pd.DataFrame, label_col: str) -> dict[str, Any] | None:
    """How the label column of the source's raw rows holds label sets (tunelab.data.multilabel.detect_label_sets),
    the rows per label, and the command that trains on it; None for a single-label column."""
    from tunelab.data.multilabel import detect_label_sets, parse_label_set

    if label_col not in raw.columns:
        return None  # load_source names the missing column
    found = detect_label_sets(raw[label_col])
    if found is None:
        return None
    separator = found.get("separator")
    counts: Counter[str] = Counter()
    for value in raw[label_col]:
        try:
            counts.update(parse_label_set(value, separator) or [])
        except TunelabError:
            continue  # a value that is not a label set: train names it with its row
    flag = f" --label-sep '{separator}'" if separator else ""
    shape = "lists of labels" if separator is None else f"labels separated by '{separator}'"
    found.update(
        label_counts=dict(counts.most_common()),
        advice=f"label column '{label_col}' looks multi-label ({shape}, {len(counts)} labels): "
        f"train with --task multi-label --label-col {label_col}{flag}; the class counts treat each label set as one class",
    )
    return found


def training_rows(frame: pd.DataFrame, test_frame: pd.DataFrame | None = None) -> int:
    """The rows `tunelab train` trains on with its default settings: the same split function, with
    eval and (unless a test file is given) test rows held out."""
    defaults = DataSettings()
    try:
        splits = make_splits(frame, defaults.eval_fraction, defaults.test_fraction, defaults.seed, test_frame=test_frame)
    except TunelabError:
        return len(frame)  # train refuses this data (e.g. a class too small to split); all rows bound what it could use
    return len(splits["train"])


def small_data_warning(train_rows: int, rows: int, recipe: str, test_given: bool = False) -> str:
    held = "eval rows" if test_given else "eval and test rows"
    held_out = f" of the {rows}, after `tunelab train` holds out its {held}" if train_rows < rows else ""
    return (
        f"small training set: {train_rows} training rows{held_out}. Below {SMALL_DATA_ROWS:,} rows a TF-IDF + logistic-regression "
        "baseline often beats fine-tuning (on ~550 rows of reviews it did); the evaluation report compares the "
        f"fine-tuned model against that baseline on the same test rows and says which wins. `tunelab train` will use the recipe {recipe}."
    )
