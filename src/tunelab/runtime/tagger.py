"""A token-classification run's forward passes: word tags, and entity spans with character offsets.

A word's tag is the argmax of its first word piece's logits (the piece that carried the tag in
training; tunelab.data.token_tags.aligned_labels). Entities are read from the word tags by seqeval's
chunking (the same reading the metrics use) and placed in the text by the words' offsets, so they
match `transformers.pipeline("token-classification", aggregation_strategy="first")` on the same
model folder. Only the forward pass (a padded batch -> each piece's logits) depends on the backend:
PyTorch, or the run's ONNX fp32 or int8 model in ONNX Runtime or OpenVINO (`open_tagger`; written and
checked on the test split's word tags by runtime/token_export.py, chosen and gated by runtime/choice.py's
`load_tagger`), so every backend's entities are read by the same code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab import hardware
from tunelab.backends import BACKENDS
from tunelab.data.token_tags import split_words
from tunelab.errors import TunelabError
from tunelab.models.classifier import model_max_length, softmax
from tunelab.run import Run
from tunelab.runtime.scorers import onnx_path, open_session

TASK = "token-classification"
AGGREGATION = "first"  # the pipeline() aggregation strategy that reads words as we do

Forward = Callable[[Any], np.ndarray]  # a padded batch from the tokenizer -> (sentences, pieces, tags) logits


@dataclass
class TokenTagger:
    tokenizer: object
    tags: list[str]
    max_length: int
    forward: Forward
    backend: str = "torch"
    model: torch.nn.Module | None = None  # the PyTorch model (what the ONNX export traces); None on the other backends

    @classmethod
    def load(cls, model_dir: str | os.PathLike) -> TokenTagger:
        """The PyTorch tagger of a model folder."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForTokenClassification.from_pretrained(model_dir)
        model.eval()

        @torch.inference_mode()
        def piece_logits(batch) -> np.ndarray:
            return model(**batch).logits.float().numpy()

        # Every word within the model's limit is tagged, whatever length training cut its sentences to.
        return cls(tokenizer, tags_of(model.config), model_max_length(model.config, tokenizer), piece_logits, model=model)

    def on_session(self, session, backend: str) -> TokenTagger:
        """The same tagger with its forward pass run by an ONNX Runtime (or OpenVINO) session."""
        return dataclasses.replace(self, forward=session_forward(session), backend=backend, model=None)

    def word_tags(
        self,
        sentences: Sequence[Sequence[str]],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[list[str]], list[np.ndarray]]:
        """Each sentence's word tags and each word's tag probabilities; words past max_length are tagged O."""
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
                proba = softmax(self.forward(batch))
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


def tags_of(config) -> list[str]:
    return [config.id2label[i] for i in range(config.num_labels)]


def session_forward(session) -> Forward:
    """The forward pass of an exported tagger: the tokenizer's batch fed to `session` by input name, its `logits` returned."""
    names = [i.name for i in session.get_inputs()]

    def piece_logits(batch) -> np.ndarray:
        return session.run(["logits"], {name: batch[name].numpy().astype(np.int64) for name in names})[0]

    return piece_logits


def open_tagger(run: Run, backend: str, threads: int | None = None) -> TokenTagger:
    """A tagger of a finished token-classification run on exactly `backend`; its model file must exist (see runtime.choice.load_tagger)."""
    if backend not in BACKENDS:
        raise TunelabError(f"unknown backend '{backend}'", f"use one of: {', '.join(BACKENDS)}")
    if backend == "torch":
        hardware.set_threads(threads)
        return TokenTagger.load(run.model_dir)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    config = AutoConfig.from_pretrained(run.model_dir)
    session = open_session(onnx_path(run, backend), backend, threads)
    return TokenTagger(tokenizer, tags_of(config), model_max_length(config, tokenizer), session_forward(session), backend)


def split_sentences(run: Run, split: str) -> list[list[str]]:
    """The words of each sentence of one of the run's splits (its backends are checked on test and eval, timed on test)."""
    return [list(words) for words in run.split(split)["words"]]


def entity_words(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a tag sequence, read as seqeval reads it."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(kind, first, last) for kind, first, last in get_entities(list(tags))]
