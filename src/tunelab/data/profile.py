"""The data profile: what a person should know about the data before trusting a model trained on it."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tunelab.data.tokenize import length_stats, token_lengths
from tunelab.textpairs import PAIR_COLUMN, frame_inputs

IMBALANCE_RATIO = 10.0  # largest class / smallest class above which we warn


def profile_splits(
    splits: dict[str, pd.DataFrame],
    tokenizer=None,
    model_limit: int | None = None,
    dropped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Rows, class balance, token lengths, empty/duplicate rows and warnings for each split."""
    profile: dict[str, Any] = {"splits": {}, "dropped": dropped or {}, "warnings": []}
    warnings: list[str] = profile["warnings"]
    for name, frame in splits.items():
        counts = frame["label"].value_counts()
        entry: dict[str, Any] = {
            "rows": int(len(frame)),
            "class_counts": {str(k): int(v) for k, v in counts.items()},
            # A pair data set repeats its first texts (a question with several passages): count repeated pairs.
            "duplicate_texts": int(frame.duplicated([c for c in ("text", PAIR_COLUMN) if c in frame]).sum()),
        }
        if tokenizer is not None:
            lengths = token_lengths(tokenizer, frame_inputs(frame))
            entry["token_length"] = length_stats(lengths)
            if model_limit and len(lengths):
                longer = float((lengths > model_limit).mean())
                entry["longer_than_model_limit"] = longer
                if longer > 0.05:
                    warnings.append(f"{name}: {longer:.0%} of texts are longer than the model's {model_limit} tokens and will be truncated")
        profile["splits"][name] = entry
        if len(counts) >= 2 and counts.min() > 0 and counts.max() / counts.min() > IMBALANCE_RATIO:
            warnings.append(
                f"{name}: class imbalance — '{counts.index[0]}' has {counts.max()} rows, "
                f"'{counts.index[-1]}' only {counts.min()} (consider macro-F1 over accuracy)"
            )
        if entry["duplicate_texts"]:
            warnings.append(f"{name}: {entry['duplicate_texts']} duplicate texts")
    if "train" in splits:
        train_texts = set(splits["train"]["text"])
        for name in ("eval", "test"):
            if name in splits:
                overlap = int(splits[name]["text"].isin(train_texts).sum())
                profile["splits"][name]["overlap_with_train"] = overlap
                if overlap:
                    warnings.append(f"{name}: {overlap} texts also appear in train — scores on {name} will be optimistic")
    for reason, count in (dropped or {}).items():
        if count:
            warnings.append(f"dropped {count} rows ({reason.replace('_', ' ')})")
    return profile
