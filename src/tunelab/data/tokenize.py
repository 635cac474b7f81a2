"""Tokenization: token-length statistics, the max length they suggest, and the tokenized datasets."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tunelab import textpairs
from tunelab.textpairs import PAIR_COLUMN, ModelInput

PERCENTILES = (50, 90, 95, 99)


def token_lengths(tokenizer, texts: Sequence[ModelInput], sample: int | None = 5000, seed: int = 0) -> np.ndarray:
    """Token counts (with special tokens) of the texts or text pairs, or of a seeded sample of them."""
    texts = list(texts)
    if sample is not None and len(texts) > sample:
        texts = random.Random(seed).sample(texts, sample)
    if not texts:
        return np.zeros(0, dtype=np.int64)
    encoded = textpairs.tokenize(tokenizer, texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return np.array([len(ids) for ids in encoded], dtype=np.int64)


def length_stats(lengths: np.ndarray) -> dict[str, float]:
    if len(lengths) == 0:
        return {}
    stats = {f"p{p}": float(np.percentile(lengths, p)) for p in PERCENTILES}
    stats.update(mean=float(lengths.mean()), max=int(lengths.max()), min=int(lengths.min()))
    return stats


def choose_max_length(lengths: np.ndarray, model_limit: int, percentile: float = 95, multiple: int = 8) -> int:
    """The data's `percentile` token length, rounded up to a multiple of 8, capped by the model.

    Padding every example to the model's limit (512) wastes most of the compute on short texts;
    truncating the longest 5% loses little.
    """
    if len(lengths) == 0:
        return model_limit
    wanted = math.ceil(float(np.percentile(lengths, percentile)) / multiple) * multiple
    return int(min(max(wanted, multiple), model_limit))


def tokenize_frame(frame: pd.DataFrame, tokenizer, max_length: int, label2id: dict[str, int] | None):
    """A datasets.Dataset with input_ids, attention_mask, labels and length (for length-grouped batches);
    a frame with a `text_pair` column is tokenized as pairs (token_type_ids tell the two texts apart).

    No padding here: the collator pads each batch to its own longest example.
    """
    import datasets

    text_columns = [column for column in ("text", PAIR_COLUMN) if column in frame]
    columns = {column: frame[column].tolist() for column in text_columns}
    if label2id is not None:
        columns["labels"] = [label2id[label] for label in frame["label"]]
    dataset = datasets.Dataset.from_dict(columns)

    def encode(batch):
        inputs = list(zip(batch["text"], batch[PAIR_COLUMN])) if PAIR_COLUMN in batch else batch["text"]
        encoded = textpairs.tokenize(tokenizer, inputs, truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=text_columns, desc="tokenizing")
