"""A model input is a text, or a (text, text_pair) pair for pair classification (NLI, paraphrase,
question–passage relevance).

A pair is tokenized as the tokenizer's text pair — `[CLS] text [SEP] text_pair [SEP]` with
token_type_ids telling the two apart, truncated longest-first — so training, every scorer (PyTorch and
ONNX), the token-length statistics and the export parity check read pairs the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The column a pair's second text lives in, in splits/*.parquet and predictions (the first is `text`).
PAIR_COLUMN = "text_pair"
TASK = "pair-classification"

ModelInput = str | tuple[str, str]


def frame_inputs(frame: Any) -> list[ModelInput]:
    """The model inputs of a DataFrame: its `text` column, paired with `text_pair` when it has one."""
    texts = frame["text"].astype(str).tolist()
    if PAIR_COLUMN not in frame.columns:
        return texts
    return list(zip(texts, frame[PAIR_COLUMN].astype(str).tolist()))


def is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list))


def tokenize(tokenizer: Any, inputs: Sequence[ModelInput], **kwargs: Any) -> Any:
    """`tokenizer(texts, **kwargs)`, or `tokenizer(texts, text_pairs, **kwargs)` when the inputs are pairs."""
    inputs = list(inputs)
    pairs = [is_pair(item) for item in inputs]
    if not any(pairs):
        return tokenizer(inputs, **kwargs)
    if not all(pairs) or any(len(item) != 2 for item in inputs):
        raise ValueError("model inputs must be all texts or all (text, text_pair) pairs")
    return tokenizer([item[0] for item in inputs], [item[1] for item in inputs], **kwargs)


def char_length(item: ModelInput) -> int:
    """Characters of a text or of both texts of a pair: what length-sorted batching sorts by."""
    return len(item[0]) + len(item[1]) if is_pair(item) else len(item)
