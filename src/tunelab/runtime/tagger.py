"""A token-classification run's forward passes: word tags, and entity spans with character offsets.

A word's tag is the argmax of its first word piece's logits (the piece that carried the tag in
training; tunelab.data.token_tags.aligned_labels). Entities are read from the word tags by seqeval's
chunking (the same reading the metrics use) and placed in the text by the words' offsets, so they
match `transformers.pipeline("token-classification", aggregation_strategy="first")` on the same
model folder. Scores with PyTorch; `tunelab export` writes and checks an ONNX copy (runtime/token_export.py),
which predict and serve do not use yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.data.token_tags import split_words
from tunelab.models.classifier import model_max_length, softmax

TASK = "token-classification"
AGGREGATION = "first"  # the pipeline() aggregation strategy that reads words as we do


@dataclass
class TokenTagger:
    model: torch.nn.Module
    tokenizer: object
    tags: list[str]
    max_length: int

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> TokenTagger:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForTokenClassification.from_pretrained(model_dir)
        model.eval()
        tags = [model.config.id2label[i] for i in range(model.config.num_labels)]
        # Every word within the model's limit is tagged, whatever length training cut its sentences to.
        return cls(model, tokenizer, tags, model_max_length(model.config, tokenizer))

    @torch.inference_mode()
    def piece_logits(self, batch) -> np.ndarray:
        """(sentences, pieces, tags) logits of a padded batch from the tokenizer, by the PyTorch model."""
        return self.model(**batch).logits.float().numpy()

    def word_tags(
        self,
        sentences: Sequence[Sequence[str]],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        forward: Callable[[Any], np.ndarray] | None = None,
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each sentence's word tags and each word's tag probabilities; words past max_length are tagged O.
        forward: the batch -> piece logits function (default piece_logits; the ONNX export's parity check passes its session's)."""
        forward = forward or self.piece_logits
        sentences = [list(words) for words in sentences]
        tags: list[list[str]] = [["O"] * len(words) for words in sentences]
        probabilities = [np.zeros((len(words), len(self.tags)), dtype=np.float32) for words in sentences]
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        for start in range(0, len(order), batch_size):
            index = [i for i in order[start : start + batch_size] if sentences[i]]
            if index:
                batch = self.tokenizer(
                    [sentences[i] for i in index], is_split_into_words=True, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
                )
                proba = softmax(forward(batch))
                for row, i in enumerate(index):
                    seen: set[int] = set()
                    for piece, word in enumerate(batch.word_ids(row)):
                        if word is not None and word not in seen:
                            seen.add(word)
                            probabilities[i][word] = proba[row, piece]
                            tags[i][word] = self.tags[int(proba[row, piece].argmax())]
            if progress:
                progress(len(order[start : start + batch_size]))
        return tags, probabilities

    def entities(self, texts: Sequence[str], batch_size: int = 64, progress: Callable[[int], None] | None = None) -> list[list[dict[str, Any]]]:
        """For each text, its entities: type, start and end (character offsets, end exclusive), the text, and a score
        (the mean probability of its words' tags)."""
        split = [split_words(text) for text in texts]
        tags, probabilities = self.word_tags([words for words, _ in split], batch_size, progress)
        results = []
        for text, (words, starts), sentence_tags, proba in zip(texts, split, tags, probabilities):
            spans = []
            for kind, first, last in entity_words(sentence_tags):
                start, end = starts[first], starts[last] + len(words[last])
                score = float(np.mean([proba[w, self.tags.index(sentence_tags[w])] for w in range(first, last + 1)]))
                spans.append({"type": kind, "start": start, "end": end, "text": text[start:end], "score": score})
            results.append(spans)
        return results


def entity_words(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a tag sequence, read as seqeval reads it."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, first, last) for kind, first, last in get_entities(list(tags))]
