"""Loading a fine-tuned sequence classifier and turning texts into class probabilities.

Shared by predict, evaluate, serve and compare, so all of them score texts the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab import textpairs
from tunelab.textpairs import ModelInput

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# model_max_length's answer when neither the config nor the tokenizer states a limit: the 512
# position embeddings of BERT-family encoders such as the catalogue's MiniLM.
FALLBACK_MAX_LENGTH = 512
# Tokenizers without a limit report a huge sentinel (int(1e30)); a "limit" at or above this is none.
NO_LIMIT = 1_000_000


@dataclass
class Classifier:
    model: torch.nn.Module
    tokenizer: object
    labels: list[str]
    max_length: int

    @classmethod
    def load(cls, model_dir: str | os.PathLike, max_length: int | None = None) -> Classifier:
        from transformers import AutoTokenizer

        from tunelab.models.pooling import load_sequence_classifier

        model_dir = Path(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = load_sequence_classifier(model_dir)
        model.eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if max_length is None:
            max_length = model_max_length(model.config, tokenizer)
        return cls(model, tokenizer, labels, max_length)

    @torch.inference_mode()
    def logits(
        self,
        texts: Sequence[ModelInput],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Logits for every text (or text pair, tunelab.textpairs), batched by similar length so little padding is computed."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        # Sorting by length before batching avoids padding short texts to a long neighbour.
        order = sorted(range(len(texts)), key=lambda i: textpairs.char_length(texts[i]))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = textpairs.tokenize(
                self.tokenizer,
                [texts[i] for i in index],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = self.model(**batch).logits.float().numpy()
            out[index] = logits
            if progress:
                progress(len(index))
        return out

    def predict_proba(self, texts: Sequence[ModelInput], batch_size: int = 64, progress=None) -> np.ndarray:
        return softmax(self.logits(texts, batch_size, progress))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def model_max_length(config, tokenizer) -> int:
    """The longest input the model accepts: position embeddings and the tokenizer's own limit."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if x and x < NO_LIMIT]
    return min(limits) if limits else FALLBACK_MAX_LENGTH
