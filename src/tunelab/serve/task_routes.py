"""What the services of the other tasks (serve/entities.py, serve/label_sets.py) share with each other:
a run's per-text scorer loaded into a LoadedModel (its version that of the backend it runs on), and POST
/v1/predict over the classifier's request ({"texts": [...]}), answered in the task's own response schema.

The batcher hands each request its slice of what the task's scorer returns for the batch, so a task's
scorer returns one answer per text and the route only wraps those answers in its response model.
"""

# No `from __future__ import annotations`: FastAPI must see the request model, built per app, as a real annotation.
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from tunelab.run import Run
from tunelab.runtime.scorers import model_version
from tunelab.serve.holder import LoadedModel, finite


@dataclass
class PerTextScorer:
    """A task's model behind the service's batcher: `answer(texts, batch_size)` gives one answer per text, on `backend`."""

    labels: list[str]
    answer: Callable[[Sequence[str], int], list[Any]]
    backend: str = "torch"

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress=None) -> list[Any]:
        return self.answer(texts, batch_size or max(1, len(texts)))


def per_text_loader(run: Run, scorer: Callable[[Run], PerTextScorer]) -> Callable[[], LoadedModel]:
    """A function that loads `scorer(run)` into a LoadedModel (called off the event loop)."""

    def load() -> LoadedModel:
        loaded = scorer(run)
        return LoadedModel(loaded, run.path.name, model_version(run, loaded.backend), str(run.path), finite(run.metrics))

    return load


def texts_router(
    service, request_model: type[BaseModel], response_model: type[BaseModel], description: str, answer: Callable[[list[Any], LoadedModel], BaseModel]
) -> APIRouter:
    """POST /v1/predict: the request's texts through the service's batcher, `answer(answers per text, model)` as the response."""
    router = APIRouter()

    @router.post("/v1/predict", response_model=response_model, description=description)
    async def predict(body: request_model):  # type: ignore[valid-type]
        service.ready_model()
        found, model = await service.submit(body.texts)  # a full queue or a stopped service: 503
        return answer(found, model)

    return router
