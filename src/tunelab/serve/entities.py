"""The service for a token-classification run: POST /v1/predict answers with each text's entities.

The same app as a classifier's (serve/app.py: key, limits, micro-batching, hot swap, /v1/model,
/health, /ready, /metrics, /docs); only the predict route and its response schema differ. The batcher
hands each request its slice of what the model's scorer returns, which for a tagger is the list of
each text's entities, read as `tunelab predict` reads them (runtime/tagger.py) on the backend
runtime/choice.py's `load_tagger` gives: any of tunelab.backends.CHOICES, behind the word-tag parity gate.
"""

# No `from __future__ import annotations`: FastAPI must see the request model, built per app, as a real annotation.
import logging
import os
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tunelab.run import Run
from tunelab.runtime.choice import choose_backend, load_tagger
from tunelab.serve.holder import LoadedModel, ModelRef
from tunelab.serve.task_routes import PerTextScorer, per_text_loader, texts_router

log = logging.getLogger("tunelab.serve")


class Entity(BaseModel):
    type: str = Field(description="the entity type, e.g. COUNTRY")
    start: int = Field(description="character offset of its first character in the text")
    end: int = Field(description="character offset just after its last character (text[start:end] is the entity)")
    text: str = Field(description="the entity as written in the text")
    score: float = Field(description="the mean probability of its words' tags")


class EntityPrediction(BaseModel):
    entities: list[Entity] = Field(description="the entities found, in text order")


class EntitiesResponse(BaseModel):
    model: ModelRef
    predictions: list[EntityPrediction]


def check_token_servable(run: Run, backend: str, threads: int | None = None) -> None:
    """Fail before the server starts: a backend the run may not use. Its first use (export, gate, auto's timing) happens here, once."""
    choose_backend(run, backend, threads)


def tagger_loader(run: Run | str | os.PathLike, backend: str = "torch", threads: int | None = None) -> Callable[[], LoadedModel]:
    """A function that loads a token-classification run on `backend` into a LoadedModel (called off the event loop)."""

    def scorer(run: Run) -> PerTextScorer:
        tagger = load_tagger(run, backend, threads, say=log.info)
        return PerTextScorer(tagger.tags, tagger.entities, tagger.backend)

    return per_text_loader(run if isinstance(run, Run) else Run.open(run), scorer)


def entities_router(service, request_model: type[BaseModel]) -> APIRouter:
    """POST /v1/predict for a tagger: the classifier's request ({"texts": [...]}), answered with entity spans."""

    def answer(found: list[list[dict[str, Any]]], model: LoadedModel) -> EntitiesResponse:
        return EntitiesResponse(
            model=ModelRef(name=model.name, version=model.version),
            predictions=[EntityPrediction(entities=[Entity(**entity) for entity in entities]) for entities in found],
        )

    return texts_router(
        service, request_model, EntitiesResponse, "The entities of each text, with character offsets, in the order the texts were given.", answer
    )
