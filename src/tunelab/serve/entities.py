"""The service for a token-classification run: POST /v1/predict answers with each text's entities.

The same app as a classifier's (serve/app.py: key, limits, micro-batching, hot swap, /v1/model,
/health, /ready, /metrics, /docs); only the predict route and its response schema differ. The batcher
hands each request its slice of what the model's scorer returns, which for a tagger is the list of
each text's entities (PyTorch only: the ONNX exports are for sequence classifiers).
"""

# No `from __future__ import annotations`: FastAPI must see the request model, built per app, as a real annotation.
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.runtime.scorers import model_version
from tunelab.runtime.tagger import TokenTagger
from tunelab.serve.holder import LoadedModel, finite


class Entity(BaseModel):
    type: str = Field(description="the entity type, e.g. COUNTRY")
    start: int = Field(description="character offset of its first character in the text")
    end: int = Field(description="character offset just after its last character (text[start:end] is the entity)")
    text: str = Field(description="the entity as written in the text")
    score: float = Field(description="the mean probability of its words' tags")


class EntityPrediction(BaseModel):
    entities: list[Entity] = Field(description="the entities found, in text order")


class EntityModelRef(BaseModel):
    name: str
    version: str


class EntitiesResponse(BaseModel):
    model: EntityModelRef
    predictions: list[EntityPrediction]


@dataclass
class EntityScorer:
    """The tagger behind the service's batcher: one entity list per text."""

    tagger: TokenTagger
    backend: str = "torch"

    @property
    def labels(self) -> list[str]:
        return self.tagger.tags

    def logits(self, texts: Sequence[str], batch_size: int | None = None, progress=None) -> list[list[dict[str, Any]]]:
        return self.tagger.entities(texts, batch_size or max(1, len(texts)))


def check_token_servable(run: Run, backend: str) -> None:
    if backend != "torch":
        raise TunelabError(f"--backend {backend} is for single-label classifiers; a token-classification run is served with torch", "leave out --backend")


def tagger_loader(run: Run | str | os.PathLike) -> Callable[[], LoadedModel]:
    """A function that loads a token-classification run into a LoadedModel (called off the event loop)."""
    run = run if isinstance(run, Run) else Run.open(run)

    def load() -> LoadedModel:
        return LoadedModel(EntityScorer(TokenTagger.load(run.model_dir)), run.path.name, model_version(run, "torch"), str(run.path), finite(run.metrics))

    return load


def entities_router(service, request_model: type[BaseModel]) -> APIRouter:
    """POST /v1/predict for a tagger: the classifier's request ({"texts": [...]}), answered with entity spans."""
    router = APIRouter()

    @router.post("/v1/predict", response_model=EntitiesResponse)
    async def predict(body: request_model) -> EntitiesResponse:  # type: ignore[valid-type]
        """The entities of each text, with character offsets, in the order the texts were given."""
        service.ready_model()
        found, model = await service.submit(body.texts)  # a full queue or a stopped service: 503
        return EntitiesResponse(
            model=EntityModelRef(name=model.name, version=model.version),
            predictions=[EntityPrediction(entities=[Entity(**entity) for entity in entities]) for entities in found],
        )

    return router
