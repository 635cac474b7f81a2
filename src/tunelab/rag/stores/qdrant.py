"""Scale-out store: a Qdrant collection with a dense vector and a BM25 sparse vector per chunk.

`url` picks the Qdrant: "http://host:6333" (a server or cluster), a folder path (qdrant-client's
embedded local mode), or ":memory:". Without a url the collection lives in the index folder.
BM25 runs inside Qdrant: each chunk's sparse vector holds the BM25 tf part and the collection
applies the idf (Modifier.IDF), so scores equal bm25s' on the same chunks (see bm25.py).
The word -> sparse index vocabulary and the length statistics are kept in the index folder.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunelab.atomic import write_json
from tunelab.rag.bm25 import K1, B, query_terms, sparse_vector, tokenize
from tunelab.rag.chunk import Chunk

STATE = "qdrant_bm25.json"


def point_id(chunk_id: str) -> str:
    # Qdrant ids must be integers or UUIDs; a name-based UUID keeps re-indexing idempotent.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "tunelab:" + chunk_id))


def make_client(url: str | None, index_dir: Path):
    from qdrant_client import QdrantClient

    if url is None:
        return QdrantClient(path=str(Path(index_dir) / "qdrant"))
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith(("http://", "https://")):
        return QdrantClient(url=url)
    return QdrantClient(path=str(Path(url).expanduser()))


class QdrantStore:
    def __init__(self, index_dir: Path, dim: int, url: str | None = None, collection: str = "chunks"):
        from qdrant_client import models

        self.models = models
        self.index_dir = Path(index_dir)
        self.dim = dim
        self.collection = collection
        self.client = make_client(url, self.index_dir)
        if not self.client.collection_exists(collection):
            self.client.create_collection(
                collection,
                vectors_config={"dense": models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            if url and url.startswith(("http://", "https://")):  # local mode has no payload indexes
                self.client.create_payload_index(collection, "doc_id", models.PayloadSchemaType.KEYWORD)
        state_path = self.index_dir / STATE
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        self.vocab: dict[str, int] = state.get("vocab", {})
        # doc_id -> [words, chunks]: the average chunk length BM25 normalises by.
        self.doc_lengths: dict[str, list[int]] = state.get("doc_lengths", {})

    def _avg_len(self) -> float:
        words = sum(w for w, _ in self.doc_lengths.values())
        count = sum(c for _, c in self.doc_lengths.values())
        return words / count if count else 1.0

    def upsert(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        """All chunks of a document must come in one call (index.py does so)."""
        if not chunks:
            return
        models = self.models
        token_lists = tokenize([c.indexed_text() for c in chunks])
        lengths: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for chunk, tokens in zip(chunks, token_lists):
            lengths[chunk.doc_id][0] += len(tokens)
            lengths[chunk.doc_id][1] += 1
        self.doc_lengths.update(lengths)
        avg_len = self._avg_len()
        points = []
        for chunk, tokens, vector in zip(chunks, token_lists, vectors):
            indices, values = sparse_vector(tokens, avg_len, self.vocab, K1, B)
            points.append(
                models.PointStruct(
                    id=point_id(chunk.chunk_id),
                    vector={"dense": vector.astype(float).tolist(), "bm25": models.SparseVector(indices=indices, values=values)},
                    payload=chunk.to_dict(),
                )
            )
        for start in range(0, len(points), 256):
            self.client.upsert(self.collection, points=points[start : start + 256], wait=True)

    def delete_documents(self, doc_ids: list[str]) -> None:
        if not doc_ids:
            return
        models = self.models
        selector = models.FilterSelector(filter=models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))]))
        self.client.delete(self.collection, points_selector=selector, wait=True)
        for doc_id in doc_ids:
            self.doc_lengths.pop(doc_id, None)

    def finish(self) -> None:
        write_json(self.index_dir / STATE, {"vocab": self.vocab, "doc_lengths": self.doc_lengths})

    def _hits(self, points) -> list[tuple[Chunk, float]]:
        return [(Chunk(**{k: p.payload[k] for k in Chunk.__dataclass_fields__}), float(p.score)) for p in points]

    def _of_documents(self, doc_ids: Sequence[str] | None):
        """Qdrant's filter for chunks of `doc_ids` (None: every chunk)."""
        if doc_ids is None:
            return None
        models = self.models
        return models.Filter(must=[models.FieldCondition(key="doc_id", match=models.MatchAny(any=list(doc_ids)))])

    def dense(self, vector: np.ndarray, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        if k <= 0:
            return []
        result = self.client.query_points(
            self.collection,
            query=np.asarray(vector, dtype=float).tolist(),
            using="dense",
            limit=k,
            with_payload=True,
            query_filter=self._of_documents(doc_ids),
        )
        return self._hits(result.points)

    def keyword(self, query: str, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        indices = [self.vocab[t] for t in query_terms(query) if t in self.vocab]
        if not indices or k <= 0:
            return []
        sparse = self.models.SparseVector(indices=indices, values=[1.0] * len(indices))
        result = self.client.query_points(self.collection, query=sparse, using="bm25", limit=k, with_payload=True, query_filter=self._of_documents(doc_ids))
        return [hit for hit in self._hits(result.points) if hit[1] > 0]

    def titles(self) -> dict[str, str]:
        titles: dict[str, str] = {}
        offset = None
        while True:
            points, offset = self.client.scroll(self.collection, limit=1024, offset=offset, with_payload=["doc_id", "title"], with_vectors=False)
            titles.update((p.payload["doc_id"], p.payload["title"]) for p in points)
            if offset is None:
                return titles

    def count(self) -> int:
        return self.client.count(self.collection, exact=True).count

    def close(self) -> None:
        self.client.close()
