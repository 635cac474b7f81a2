"""Seeded, stratified train / eval / test splits, and checks that the splits make sense."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.data.load import load_labelled
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.config import DataSettings, SplitSettings


def load_splits(settings: DataSettings) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The train/eval/test splits the settings describe, and the rows dropped while loading.

    A pair classifier's rows (settings.text_pair_col) that share a first text (a premise, a question)
    stay in one split, as repeated texts do."""
    return load_and_split(settings, partial(load_labelled, columns=settings), partial(make_splits, max_train_samples=settings.max_train_samples))


def load_and_split(
    settings: SplitSettings, read: Callable[[str], pd.DataFrame], split: Callable[..., dict[str, pd.DataFrame]]
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """settings.data and the user's eval/test files, each read by `read`, split by
    `split(frame, eval_fraction, test_fraction, seed, eval_frame, test_frame)`; and the rows dropped while loading."""
    frame = read(settings.data)
    given = {name: read(path) if path is not None else None for name, path in (("eval", settings.eval_data), ("test", settings.test_data))}
    splits = split(frame, settings.eval_fraction, settings.test_fraction, settings.seed, given["eval"], given["test"])
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
    needed = splits_needed(eval_frame, test_frame)
    too_few = classes[classes < needed]
    if len(too_few):
        names = ", ".join(f"'{c}' ({n})" for c, n in too_few.items())
        raise TunelabError(
            f"classes with too few examples (distinct texts) to split stratified: {names}; each needs at least {needed}",
            "add examples of those classes, remove them, or pass --eval-data/--test-data",
        )

    # At least one text of each class in each held-out split.
    splits = hold_out_texts(
        frame, firsts, {"eval": eval_fraction, "test": test_fraction}, seed, {"eval": eval_frame, "test": test_frame}, len(classes), by_label
    )
    train = splits["train"]
    if max_train_samples is not None and max_train_samples < len(train):
        if max_train_samples < len(classes):
            raise TunelabError(
                f"--max-train-samples {max_train_samples} is fewer than the {len(classes)} classes",
                f"use at least {len(classes)}",
            )
        train, _ = train_test_split(train, train_size=max_train_samples, random_state=seed, stratify=train["label"])
        train = train.reset_index(drop=True)
    splits["train"] = train
    check_labels_trained(splits)
    return {name: splits[name] for name in ("train", "eval", "test")}


def by_label(rest: pd.DataFrame, share: float) -> pd.Series:
    """Single-label strata: the label itself."""
    return rest["label"]


def splits_needed(eval_frame: pd.DataFrame | None, test_frame: pd.DataFrame | None) -> int:
    """How many splits a class, label or question must reach: train, and each split not given by the user."""
    return 1 + (eval_frame is None) + (test_frame is None)


def hold_out_texts(
    frame: pd.DataFrame,
    firsts: pd.DataFrame,
    fractions: dict[str, float],
    seed: int,
    given: dict[str, pd.DataFrame | None],
    at_least: int,
    strata: Callable[[pd.DataFrame, float], Any],
) -> dict[str, pd.DataFrame]:
    """train/eval/test of `frame` by its distinct texts (`firsts`): test then eval held out (`hold_out`),
    seeded and stratified by `strata(rest, share)`, at least `at_least` texts each; the rows repeating
    a text follow it."""

    def split_off(rest: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        share = held_out_share(fraction, len(firsts), len(rest), at_least)
        rest, held = train_test_split(rest, test_size=share, random_state=seed, stratify=strata(rest, share))
        return rest, with_repeats(held, frame)

    rest, splits = hold_out(given, fractions, firsts, split_off)
    splits["train"] = with_repeats(rest, frame)
    return splits


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


def check_labels_trained(
    splits: dict[str, pd.DataFrame],
    labels_of: Callable[[pd.DataFrame], set[str]] = lambda frame: set(frame["label"]),
    hint: str = "add training examples of them, or remove those rows from the {file} file",
) -> None:
    """Evaluation labels the model never saw in training cannot be predicted (nor learned): refuse them by name."""
    known = labels_of(splits["train"])
    for name in ("eval", "test"):
        unseen = sorted(labels_of(splits[name]) - known)
        if unseen:
            raise TunelabError(
                f"{name} labels not in the training data: {', '.join(map(repr, unseen[:5]))}",
                hint.format(file="--eval-data" if name == "eval" else "--test-data"),
            )
