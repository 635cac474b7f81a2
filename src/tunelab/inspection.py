"""`tunelab data inspect`: the profile of a data source before any training."""

from __future__ import annotations

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
) -> dict[str, Any]:
    """Rows, class balance, token-length percentiles, empty and duplicate rows, warnings."""
    frame = load_source(source, text_col, label_col, encoding, delimiter=delimiter)
    tokenizer, limit = None, None
    if model:
        from transformers import AutoConfig, AutoTokenizer

        from tunelab.models.classifier import model_max_length

        folder = resolve_model(model)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        limit = model_max_length(AutoConfig.from_pretrained(folder), tokenizer)
    splits = {"all": frame}
    if test_data:
        # Named "train" so the profile's overlap check compares the test file against it.
        splits = {"train": frame, "test": load_source(test_data, text_col, label_col, encoding, delimiter=delimiter)}
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
    profile["recipe"] = describe_recipe(resolve_recipe(TrainConfig(), profile["train_rows"]))
    # Below SMALL_DATA_ROWS a TF-IDF baseline can beat fine-tuning: issue 20 found it winning at ~550 training rows.
    if profile["train_rows"] < SMALL_DATA_ROWS:
        profile["warnings"].insert(0, small_data_warning(profile["train_rows"], len(frame), profile["recipe"], test_data is not None))
    return profile


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
