"""The model behind the service, swappable atomically.

A batch reads the current model once and finishes on it, so a swap (a new registry version, say)
never mixes two models in one answer: requests already computing finish on the old model, the
next batch uses the new one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel

from tunelab.runtime.scorers import Scorer
from tunelab.textpairs import ModelInput


@dataclass(frozen=True)
class LoadedModel:
    scorer: Scorer
    name: str
    version: str
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    pairs: bool = False  # a pair-classification model: it scores (text, text_pair) pairs, not texts

    @property
    def labels(self) -> list[str]:
        return self.scorer.labels

    @property
    def backend(self) -> str:
        return self.scorer.backend


class ModelRef(BaseModel):
    """Which model answered, in every prediction response."""

    name: str
    version: str


class NotReady(Exception):
    """No model is loaded yet (or loading failed)."""


class ModelHolder:
    def __init__(self) -> None:
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()
        self.error: str | None = None  # why loading failed, for /ready

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from the next batch on; returns the previous one."""
        with self._lock:
            previous, self._current = self._current, model
            self.error = None
        return previous

    def score(self, texts: Sequence[ModelInput]) -> tuple[np.ndarray, LoadedModel]:
        model = self._current  # read once: the whole batch runs on this model
        if model is None:
            raise NotReady()
        return model.scorer.logits(texts), model


def finite(value: Any) -> Any:
    """metrics.json may hold NaN (e.g. ROC AUC of an absent class); JSON responses may not."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
