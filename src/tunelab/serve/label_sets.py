"""The service for a multi-label run: POST /v1/predict answers with each text's label set.

The same app as a classifier's (serve/app.py: key, limits, micro-batching, hot swap, /v1/model,
/health, /ready, /metrics, /docs); only the predict route and its response schema differ. The batcher
hands each request its slice of what the model's scorer returns, which here is what `tunelab predict`
gives for each text (`MultiLabelClassifier.predict`: the sigmoid and the run's thresholds through
`models/multilabel.decide`), so the service and predict cannot disagree. On any backend, as predict:
runtime/choice.py's `load_multilabel`, gated on the label sets its logits give.
"""

# No `from __future__ import annotations`: FastAPI must see the request model, built per app, as a real annotation.
import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.models.multilabel import read_thresholds
from tunelab.run import Run
from tunelab.runtime.choice import choose_backend, load_multilabel
from tunelab.serve.holder import LoadedModel, ModelRef
from tunelab.serve.task_routes import PerTextScorer, per_text_loader, texts_router

log = logging.getLogger("tunelab.serve")


class ChosenLabel(BaseModel):
    label: str = Field(description="a label whose probability reaches its threshold")
    probability: float = Field(description="its probability (the label's sigmoid)")
    threshold: float = Field(description="its decision threshold, chosen on the run's eval split")


class LabelSetPrediction(BaseModel):
    labels: list[ChosenLabel] = Field(description="every label over its threshold, most probable first (empty when none is)")
    probabilities: dict[str, float] = Field(description="every label's probability")


class LabelSetsResponse(BaseModel):
    model: ModelRef
    predictions: list[LabelSetPrediction]


def check_multilabel_servable(run: Run, backend: str, threads: int | None = None) -> None:
    """Fail before the server starts: a run without its thresholds, or a backend the run may not use (its first use happens here, once)."""
    read_thresholds(run)
    choose_backend(run, backend, threads)


def label_set_loader(run: Run | str | os.PathLike, backend: str = "torch", threads: int | None = None) -> Callable[[], LoadedModel]:
    """A function that loads a multi-label run on `backend` into a LoadedModel (called off the event loop)."""

    def scorer(run: Run) -> PerTextScorer:
        classifier = load_multilabel(run, backend, threads, say=log.info)
        return PerTextScorer(classifier.labels, classifier.predict, classifier.backend)

    return per_text_loader(run if isinstance(run, Run) else Run.open(run), scorer)


def label_sets_router(service, request_model: type[BaseModel]) -> APIRouter:
    """POST /v1/predict for a multi-label run: the classifier's request ({"texts": [...]}), answered with label sets."""

    def answer(found: list[dict[str, Any]], model: LoadedModel) -> LabelSetsResponse:
        return LabelSetsResponse(model=ModelRef(name=model.name, version=model.version), predictions=[LabelSetPrediction(**row) for row in found])

    return texts_router(
        service, request_model, LabelSetsResponse, "Each text's labels over their thresholds and every label's probability, in the order given.", answer
    )
