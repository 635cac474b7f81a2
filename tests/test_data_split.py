"""Splitting one data file: seeded, stratified, and a repeated text never in two splits."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from tunelab.data.split import make_splits
from tunelab.errors import TunelabError


def _frame(texts: list[str], labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": labels})


def test_a_repeated_text_goes_to_one_split_with_all_its_rows():
    texts = [f"text {i}" for i in range(60)]
    labels = ["a" if i % 2 else "b" for i in range(60)]
    # every fourth text three times more, the way scraped or merged data repeats rows
    repeats = [pair for i, pair in enumerate(zip(texts, labels)) if i % 4 == 0] * 3
    frame = _frame(texts + [t for t, _ in repeats], labels + [label for _, label in repeats])
    splits = make_splits(frame, 0.2, 0.2, seed=7)
    owner = {}
    for name, split in splits.items():
        for text in set(split["text"]):
            assert owner.setdefault(text, name) == name, f"{text!r} is in {owner[text]} and {name}"
    assert sum(len(s) for s in splits.values()) == len(frame)  # no row lost
    counts = frame["text"].value_counts()
    for split in splits.values():
        assert split["text"].value_counts().to_dict() == counts[split["text"].unique()].to_dict()  # all of a text's rows together


def test_without_repeats_the_split_is_the_plain_stratified_one():
    frame = _frame([f"t{i}" for i in range(50)], ["x" if i < 30 else "y" for i in range(50)])
    splits = make_splits(frame, 0.1, 0.2, seed=3)
    rest, test = train_test_split(frame, test_size=0.2, random_state=3, stratify=frame["label"])
    assert list(splits["test"]["text"]) == list(test["text"])
    assert len(splits["train"]) + len(splits["eval"]) == len(rest)


def test_a_class_with_one_distinct_text_cannot_be_split():
    frame = _frame([f"t{i}" for i in range(20)] + ["same"] * 5, ["x"] * 20 + ["y"] * 5)
    with pytest.raises(TunelabError, match="too few examples \\(distinct texts\\).*'y' \\(1\\)"):
        make_splits(frame)
