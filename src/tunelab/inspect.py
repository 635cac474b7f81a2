"""`tunelab data inspect`: the profile of a data source before any training."""

from __future__ import annotations

from typing import Any

from tunelab.data import load_source, profile_splits
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
    )
    return profile
