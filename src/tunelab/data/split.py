"""Seeded, stratified train / eval / test splits, and checks that the splits make sense."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.data.load import load_source
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.config import DataSettings


def load_splits(settings: DataSettings) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The train/eval/test splits the settings describe, and the rows dropped while loading."""

    def load(source: str | None) -> pd.DataFrame | None:
        if source is None:
            return None
        return load_source(source, settings.text_col, settings.label_col, settings.encoding, settings.strict, settings.delimiter, text_pair_col)

    # A pair-classification config (config.PairClassificationConfig) names each row's second text. Rows
    # sharing a first text (a premise, a question) stay in one split, as repeated texts do.
    text_pair_col = getattr(settings, "text_pair_col", None)

    frame = load(settings.data)
    splits = make_splits(
        frame,
        settings.eval_fraction,
        settings.test_fraction,
        settings.seed,
        load(settings.eval_data),
        load(settings.test_data),
        settings.max_train_samples,
    )
    return splits, frame.attrs.get("dropped", {})


def make_splits(
    frame: pd.DataFrame,
    eval_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 42,
    eval_frame: pd.DataFrame | None = None,
    test_frame: pd.DataFrame | None = None,
    max_train_samples: int | None = None,
) -> dict[str, pd.DataFrame]:
    """Split `frame` into train/eval/test, keeping class proportions; user-given splits win."""
    source = frame.attrs.get("source", "the data")
    if len(frame) == 0:
        raise TunelabError(f"{source} has no usable rows", "check the file and the --text-col/--label-col choice")
    # Rows repeating a text go wherever its first row goes: a text in both train and test would be
    # scored on what the model was trained on. Without repeats this is the plain stratified split.
    firsts = frame.drop_duplicates("text")
    classes = firsts["label"].value_counts()
    if len(classes) < 2:
        raise TunelabError(
            f"{source} has a single class ('{classes.index[0]}'); a classifier needs at least two",
            "check --label-col, or add examples of the other classes",
        )
    needed = 1 + (eval_frame is None) + (test_frame is None)
    too_few = classes[classes < needed]
    if len(too_few):
        names = ", ".join(f"'{c}' ({n})" for c, n in too_few.items())
        raise TunelabError(
            f"classes with too few examples (distinct texts) to split stratified: {names}; each needs at least {needed}",
            "add examples of those classes, remove them, or pass --eval-data/--test-data",
        )

    def split_off(rest: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        share = held_out_share(fraction, len(firsts), len(rest), len(classes))  # at least one text of each class
        rest, held = train_test_split(rest, test_size=share, random_state=seed, stratify=rest["label"])
        return rest, with_repeats(held, frame)

    rest, splits = hold_out({"test": test_frame, "eval": eval_frame}, {"test": test_fraction, "eval": eval_fraction}, firsts, split_off)
    train = with_repeats(rest, frame)
    if max_train_samples is not None and max_train_samples < len(train):
        if max_train_samples < len(classes):
            raise TunelabError(
                f"--max-train-samples {max_train_samples} is fewer than the {len(classes)} classes",
                f"use at least {len(classes)}",
            )
        train, _ = train_test_split(train, train_size=max_train_samples, random_state=seed, stratify=train["label"])
        train = train.reset_index(drop=True)
    splits["train"] = train
    check_labels_seen(splits)
    return {name: splits[name] for name in ("train", "eval", "test")}


def hold_out(
    given: dict[str, pd.DataFrame | None],
    fractions: dict[str, float],
    rows: pd.DataFrame,
    split_off: Callable[[pd.DataFrame, float], tuple[pd.DataFrame, pd.DataFrame]],
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The test split, then the eval split: the user's own when given, else `split_off(rest, fraction)`
    -> (rest, held out) takes it from what is left; returns what is left for training, and the splits."""
    splits: dict[str, pd.DataFrame] = {}
    rest = rows
    for name in ("test", "eval"):
        if given[name] is not None:
            splits[name] = given[name].reset_index(drop=True)
        else:
            rest, splits[name] = split_off(rest, fractions[name])
    return rest, splits


def held_out_share(fraction: float, whole: int, left: int, at_least: int) -> float:
    """The share of the `left` units (texts, questions) that makes `fraction` of the `whole` data set,
    at least `at_least` units and at most half of what is left."""
    return min(max(fraction * whole / left, at_least / left), 0.5)


def with_repeats(firsts: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose text is one of `firsts`' texts, in `firsts`' order (repeats follow their first)."""
    if frame["text"].is_unique:
        return firsts.reset_index(drop=True)
    order = {text: i for i, text in enumerate(firsts["text"])}
    rows = frame[frame["text"].isin(order.keys())]
    ranks = rows["text"].map(order)
    return rows.iloc[ranks.argsort(kind="stable")].reset_index(drop=True)


def check_labels_seen(splits: dict[str, pd.DataFrame]) -> None:
    """Evaluation labels the model never saw in training cannot be predicted: refuse them."""
    known = set(splits["train"]["label"])
    for name in ("eval", "test"):
        unseen = sorted(set(splits[name]["label"]) - known)
        if unseen:
            raise TunelabError(
                f"{name} labels not in the training data: {', '.join(map(repr, unseen))}",
                f"add training examples of them, or remove those rows from the {'--eval-data' if name == 'eval' else '--test-data'} file",
            )
