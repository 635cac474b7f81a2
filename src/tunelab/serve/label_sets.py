"""The service for a multi-label run: POST /v1/predict answers with each text's label set.

The same app as a classifier's (serve/app.py: key, limits, micro-batching, hot swap, /v1/model,
/health, /ready, /metrics, /docs); only the predict route and its response schema differ. The batcher
hands each request its slice of what the model's scorer returns, which here is what `tunelab predict`
gives for each text (`MultiLabelClassifier.predict`: the sigmoid and the run's thresholds through
`models/multilabel.decide`), so the service and predict cannot disagree. PyTorch only, as predict.
"""

# No `from __future__ import annotations`: FastAPI must see the request model, built per app, as a real annotation.
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.models.multilabel import MultiLabelClassifier, read_thresholds
from tunelab.predict import multilabel_classifier
from tunelab.run import Run
from tunelab.runtime.scorers import model_version
from tunelab.serve.holder import LoadedModel, finite


class ChosenLabel(BaseModel):
    label: str = Field(description="a label whose probability reaches its threshold")
    probability: float = Field(description="its probability (the label's sigmoid)")
    threshold: float = Field(description="its decision threshold, chosen on the run's eval split")


class LabelSetPrediction(BaseModel):
    labels: list[ChosenLabel] = Field(description="every label over its threshold, most probable first (empty when none is)")
    probabilities: dict[str, float] = Field(description="every label's probability")


class LabelSetModelRef(BaseModel):
    name: str
    version: str


class LabelSetsResponse(BaseModel):
    model: LabelSetModelRef
    predictions: list[LabelSetPrediction]


@dataclass
class LabelSetScorer:
    """The multi-label classifier behind the service's batcher: one label set (and every probability) per text."""

    classifier: MultiLabelClassifier
    backend: str = "torch"

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress=None) -> list[dict[str, Any]]:
        return self.classifier.predict(texts, batch_size or max(1, len(texts)))


def check_multilabel_servable(run: Run, backend: str) -> None:
    """Fail before the server starts: a backend other than torch, or a run without its thresholds."""
    if backend != "torch":
        multilabel_classifier(run, backend)  # raises predict's one-line refusal
    read_thresholds(run)


def label_set_loader(run: Run | str | os.PathLike) -> Callable[[], LoadedModel]:
    """A function that loads a multi-label run into a LoadedModel (called off the event loop)."""
    run = run if isinstance(run, Run) else Run.open(run)

    def load() -> LoadedModel:
        scorer = LabelSetScorer(multilabel_classifier(run, "torch"))
        return LoadedModel(scorer, run.path.name, model_version(run, "torch"), str(run.path), finite(run.metrics))

    return load


def label_sets_router(service, request_model: type[BaseModel]) -> APIRouter:
    """POST /v1/predict for a multi-label run: the classifier's request ({"texts": [...]}), answered with label sets."""
    router = APIRouter()

    @router.post("/v1/predict", response_model=LabelSetsResponse)
    async def predict(body: request_model) -> LabelSetsResponse:  # type: ignore[valid-type]
        """Each text's labels over their thresholds and every label's probability, in the order the texts were given."""
        service.ready_model()
        found, model = await service.submit(body.texts)  # a full queue or a stopped service: 503
        return LabelSetsResponse(model=LabelSetModelRef(name=model.name, version=model.version), predictions=[LabelSetPrediction(**row) for row in found])

    return router
