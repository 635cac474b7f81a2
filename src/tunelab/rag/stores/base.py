"""The interface both stores implement; index.py and search only talk to this."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from tunelab.errors import TunelabError, did_you_mean
from tunelab.rag.chunk import Chunk

STORES = ("lancedb", "qdrant")


class Store(Protocol):
    def upsert(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """Add chunks with their unit vectors (replacing any with the same chunk_id)."""

    def delete_documents(self, doc_ids: list[str]) -> None:
        """Remove every chunk of these documents."""

    def finish(self) -> None:
        """Make the writes durable and searchable (e.g. rebuild the keyword index)."""

    def dense(self, vector: np.ndarray, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        """Nearest chunks by cosine similarity, best first, with the similarity; only chunks of `doc_ids` when given."""

    def keyword(self, query: str, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        """BM25 matches, best first, with the BM25 score; only chunks of `doc_ids` when given."""

    def titles(self) -> dict[str, str]:
        """doc_id -> title of every document."""

    def count(self) -> int: ...

    def close(self) -> None: ...


def open_store(kind: str, index_dir: Path, dim: int, url: str | None = None, collection: str = "chunks") -> Store:
    if kind == "lancedb":
        from tunelab.rag.stores.lancedb import LanceStore

        return LanceStore(index_dir, dim)
    if kind == "qdrant":
        from tunelab.rag.stores.qdrant import QdrantStore

        return QdrantStore(index_dir, dim, url=url, collection=collection)
    hint = did_you_mean(kind, STORES)
    raise TunelabError(f"unknown store '{kind}'; stores are: {', '.join(STORES)}", hint or "use --store lancedb or --store qdrant")
