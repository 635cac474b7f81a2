"""Build and query a document index: chunk, embed, store; search by BM25, dense vectors or both.

index/
  index.json   what was indexed and how: settings (the embedding model and the backend that embedded it), and each document's content hash
  ...          the store's own files (lancedb/ + bm25/, or qdrant/ + qdrant_bm25.json)

Re-running on a changed source embeds only documents whose content hash changed and removes
documents that are gone. Changing the model, its backend or the chunking settings rebuilds everything.
Queries are embedded by the backend that embedded the chunks (tunelab.rag.embed_choice): vectors of
two backends differ a little, and mixing them would cost recall without a word.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tunelab.atomic import write_json
from tunelab.errors import TunelabError, did_you_mean
from tunelab.rag.chunk import Chunk, chunk_document
from tunelab.rag.documents import Document, load_documents
from tunelab.rag.fuse import DEFAULT_WEIGHTS, RRF_K, rrf
from tunelab.rag.named import TitleMatcher
from tunelab.rag.stores import STORES, Store, open_store

MANIFEST = "index.json"
MODES = ("bm25", "dense", "hybrid")
FORMAT_VERSION = 1


@dataclass
class IndexReport:
    added: int
    changed: int
    removed: int
    unchanged: int
    chunks_embedded: int
    chunks_total: int
    seconds: float
    embed_seconds: float
    rebuilt: str = ""  # why everything was re-embedded, when it was

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Hit:
    rank: int
    score: float
    chunk: Chunk
    similarity: float | None = None  # query-chunk cosine, when the dense search saw this chunk

    def to_dict(self) -> dict:
        c = self.chunk
        return {
            "rank": self.rank,
            "score": round(self.score, 6),
            "source": c.doc_id,
            "title": c.title,
            "section": c.section,
            "chunk_id": c.chunk_id,
            "text": c.text,
        }


@dataclass
class Retrieval:
    hits: list[Hit]
    best_similarity: float  # the closest chunk's cosine similarity: how relevant the index is at all
    timings_ms: dict[str, float] = field(default_factory=dict)


# What a manifest written before a setting existed meant by it.
SETTING_DEFAULTS = {"backend": "torch"}


def _settings(store: str, url: str | None, collection: str, model: str, dim: int, chunk_tokens: int, overlap: int, backend: str) -> dict:
    return {
        "format": FORMAT_VERSION,
        "store": store,
        "url": url,
        "collection": collection,
        "model": model,
        "backend": backend,
        "dim": dim,
        "chunk_tokens": chunk_tokens,
        "overlap": overlap,
    }


def read_manifest(index_dir: Path) -> dict | None:
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        hint = did_you_mean(mode, MODES)
        raise TunelabError(f"unknown search mode '{mode}'; modes are: {', '.join(MODES)}", hint or "use --mode hybrid")


def build_index(
    source: str | Path | Sequence[Document],
    index_dir: str | Path,
    *,
    model: str = "minilm",
    store: str = "lancedb",
    url: str | None = None,
    collection: str = "chunks",
    chunk_tokens: int = 200,
    overlap: int = 32,
    batch_size: int = 64,
    embedder=None,
    backend: str = "torch",
    progress: bool = False,
) -> IndexReport:
    """Index SOURCE (a folder, 'factbook', or a list of Documents) into index_dir; incremental.

    backend: torch, onnx, onnx-int8, openvino, openvino-int8 or auto (tunelab.rag.embed_choice), unless `embedder` is given; the
    manifest records the backend that embedded, and queries use the same one.
    """
    started = time.perf_counter()
    if store not in STORES:
        open_store(store, Path(index_dir), 1)  # raises the precise error
    index_dir = Path(index_dir).expanduser()
    documents = list(source) if not isinstance(source, (str, Path)) else load_documents(source)
    embedder = _load_embedder(model, backend) if embedder is None else embedder
    _check_chunk_fits(embedder, chunk_tokens)
    settings = _settings(store, url, collection, embedder.name, embedder.dim, chunk_tokens, overlap, embedder_backend(embedder))
    known, rebuilt = _indexed_documents(index_dir, settings)
    index_dir.mkdir(parents=True, exist_ok=True)
    changes = _changes(documents, known)
    chunks, chunks_per_document = _chunk(changes.to_embed, embedder, chunk_tokens, overlap)
    embed_started = time.perf_counter()
    vectors = embedder.encode([c.indexed_text() for c in chunks], batch_size=batch_size, progress=progress)
    embed_seconds = time.perf_counter() - embed_started
    total = _store_chunks(index_dir, settings, changes, chunks, vectors)
    _write_manifest(index_dir, settings, source, documents, chunks_per_document, known, total)
    return IndexReport(
        added=len(changes.to_embed) - changes.changed,
        changed=changes.changed,
        removed=len(changes.removed),
        unchanged=len(documents) - len(changes.to_embed),
        chunks_embedded=len(chunks),
        chunks_total=total,
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
        rebuilt=rebuilt,
    )


@dataclass
class _Changes:
    """What an incremental build does: documents to (re-)embed, of which `changed` were indexed before, and ids to remove."""

    to_embed: list[Document]
    changed: int
    removed: list[str]


def _load_embedder(model: str, backend: str):
    from tunelab.rag.embed_choice import load_embedder

    return load_embedder(model, backend)


def embedder_backend(embedder) -> str:
    """The backend an embedder runs on; an embedder that does not say (a caller's own) counts as torch."""
    return getattr(embedder, "backend", SETTING_DEFAULTS["backend"])


def _check_chunk_fits(embedder, chunk_tokens: int) -> None:
    if chunk_tokens > embedder.max_tokens - 16:
        raise TunelabError(
            f"chunk size {chunk_tokens} tokens does not fit the embedding model's {embedder.max_tokens}-token window (with room for the title line)",
            f"use --chunk-tokens {embedder.max_tokens - 56} or less",
        )


def _indexed_documents(index_dir: Path, settings: dict) -> tuple[dict[str, dict], str]:
    """The documents already in index_dir ({doc_id: {hash, title, chunks}}) and why the index is rebuilt
    ('' when it is not): other settings remove the old store's files, so everything is embedded again."""
    old = read_manifest(index_dir) if index_dir.exists() else None
    if old is None and index_dir.exists() and any(index_dir.iterdir()):
        raise TunelabError(
            f"'{index_dir}' exists and is not a tunelab index (no {MANIFEST})",
            "choose an empty or new folder for --index",
        )
    if old is None:
        return {}, ""
    old_settings = {k: old.get(k, SETTING_DEFAULTS.get(k)) for k in settings}
    if old_settings != settings:
        changed_keys = [k for k in settings if old_settings[k] != settings[k]]
        _remove_store_files(index_dir, old)
        return {}, "settings changed: " + ", ".join(changed_keys)
    return old.get("documents", {}), ""


def _changes(documents: Sequence[Document], known: dict[str, dict]) -> _Changes:
    seen = set()
    for doc in documents:
        if doc.doc_id in seen:
            raise TunelabError(f"two documents share the id '{doc.doc_id}'", "give every document a distinct id")
        seen.add(doc.doc_id)
    current = {d.doc_id: d for d in documents}
    removed = [doc_id for doc_id in known if doc_id not in current]
    to_embed = [d for d in documents if known.get(d.doc_id, {}).get("hash") != d.content_hash]
    return _Changes(to_embed, sum(1 for d in to_embed if d.doc_id in known), removed)


def _chunk(documents: Sequence[Document], embedder, chunk_tokens: int, overlap: int) -> tuple[list[Chunk], dict[str, int]]:
    """Every document's chunks, in order, and how many each document has."""
    chunks: list[Chunk] = []
    per_doc: dict[str, int] = {}
    for doc in documents:
        doc_chunks = chunk_document(doc, embedder.tokenizer, chunk_tokens, overlap)
        per_doc[doc.doc_id] = len(doc_chunks)
        chunks.extend(doc_chunks)
    return chunks, per_doc


def _store_chunks(index_dir: Path, settings: dict, changes: _Changes, chunks: list[Chunk], vectors) -> int:
    """Replace the changed and removed documents' rows with the new chunks; the store's row count after."""
    db = open_store(settings["store"], index_dir, settings["dim"], url=settings["url"], collection=settings["collection"])
    try:
        # Deleting what is about to be re-added also clears rows a crashed earlier run left behind.
        db.delete_documents(changes.removed + [d.doc_id for d in changes.to_embed])
        db.upsert(chunks, vectors)
        db.finish()
        return db.count()
    finally:
        db.close()


def _write_manifest(
    index_dir: Path, settings: dict, source, documents: Sequence[Document], chunks_per_document: dict[str, int], known: dict[str, dict], total: int
) -> None:
    entries = {
        d.doc_id: {"hash": d.content_hash, "title": d.title, "chunks": chunks_per_document.get(d.doc_id, known.get(d.doc_id, {}).get("chunks", 0))}
        for d in documents
    }
    write_json(
        index_dir / MANIFEST,
        {**settings, "source": str(source) if isinstance(source, (str, Path)) else "documents", "chunks": total, "documents": entries},
    )


def _remove_store_files(index_dir: Path, manifest: dict) -> None:
    if manifest.get("store") == "lancedb":
        from tunelab.rag.stores.lancedb import LanceStore

        LanceStore.remove(index_dir)
    elif manifest.get("store") == "qdrant":
        from tunelab.rag.stores.qdrant import STATE, make_client

        (index_dir / STATE).unlink(missing_ok=True)
        client = make_client(manifest.get("url"), index_dir)
        try:
            if client.collection_exists(manifest.get("collection", "chunks")):
                client.delete_collection(manifest.get("collection", "chunks"))
        finally:
            client.close()
        if manifest.get("url") is None:
            shutil.rmtree(index_dir / "qdrant", ignore_errors=True)
    (index_dir / MANIFEST).unlink(missing_ok=True)


class Index:
    """An index folder opened for search. Keep one open: loading the model is the slow part."""

    def __init__(self, index_dir: str | Path, embedder=None, reranker=None, backend: str | None = None):
        self.index_dir = Path(index_dir).expanduser()
        manifest = read_manifest(self.index_dir)
        if manifest is None:
            raise TunelabError(
                f"no index at '{self.index_dir}'",
                f"build one first: tunelab rag index SOURCE --index {self.index_dir}",
            )
        self.manifest = manifest
        self.backend = manifest.get("backend", SETTING_DEFAULTS["backend"])
        if backend is not None:
            from tunelab.rag.embed_choice import EMBED_BACKENDS
            from tunelab.runtime.choice import check_backend_name

            check_backend_name(backend, EMBED_BACKENDS)
        asked = embedder_backend(embedder) if embedder is not None else backend
        if asked not in (None, "auto", self.backend):
            raise TunelabError(
                f"the index '{self.index_dir}' was embedded with {self.backend}; queries embedded with {asked} would not match its vectors",
                f"query it with its own backend (leave out --backend), or rebuild it: tunelab rag index SOURCE --index {self.index_dir} --backend {asked}",
            )
        self.store: Store = open_store(
            manifest["store"], self.index_dir, manifest["dim"], url=manifest.get("url"), collection=manifest.get("collection", "chunks")
        )
        self._embedder = embedder
        self.reranker = reranker
        self._titles: TitleMatcher | None = None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = _load_embedder(self.manifest["model"], self.backend)
        return self._embedder

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed_query(self, query: str) -> np.ndarray:
        fast = getattr(self.embedder, "encode_query", None)
        return fast(query) if fast else self.embedder.encode([query])[0]

    def retrieve(
        self,
        query: str,
        mode: str = "hybrid",
        k: int = 5,
        *,
        candidates: int | None = None,
        weights: tuple[float, float] = DEFAULT_WEIGHTS,
        rrf_k: int = RRF_K,
        need_similarity: bool = False,
        documents: Sequence[str] | None = None,
    ) -> Retrieval:
        """Top-k chunks for the query. Hybrid fuses the BM25 and dense candidate lists with RRF.

        weights are (bm25, dense), default DEFAULT_WEIGHTS. candidates is how deep each list goes before fusion or
        re-ranking (default: max(50, 4k)). `documents`: only chunks of these doc_ids are ranked (e.g. named_documents).
        """
        _check_mode(mode)
        if not query.strip():
            raise TunelabError("the query is empty", "pass the question or keywords to search for")
        if k < 1:
            raise TunelabError(f"k must be at least 1, not {k}", "use -k 5")
        depth = candidates or max(50, 4 * k)
        if mode != "hybrid" and self.reranker is None:
            depth = k
        timings: dict[str, float] = {}
        keyword: list[tuple[Chunk, float]] = []
        dense: list[tuple[Chunk, float]] = []
        if mode in ("bm25", "hybrid"):
            t = time.perf_counter()
            keyword = self.store.keyword(query, depth, documents)
            timings["bm25_ms"] = (time.perf_counter() - t) * 1000
        if mode in ("dense", "hybrid") or need_similarity:
            t = time.perf_counter()
            vector = self.embed_query(query)
            timings["embed_ms"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            dense = self.store.dense(vector, depth if mode != "bm25" else 1, documents)
            timings["dense_ms"] = (time.perf_counter() - t) * 1000
        similarity = {c.chunk_id: s for c, s in dense}
        by_id = {c.chunk_id: c for c, _ in keyword + dense}
        if mode == "bm25":
            ranked = [(c.chunk_id, s) for c, s in keyword]
        elif mode == "dense":
            ranked = [(c.chunk_id, s) for c, s in dense]
        else:
            ranked = rrf([[c.chunk_id for c, _ in keyword], [c.chunk_id for c, _ in dense]], k=rrf_k, weights=weights)
        hits = [Hit(0, score, by_id[cid], similarity.get(cid)) for cid, score in ranked[:depth]]
        if self.reranker is not None and hits:
            t = time.perf_counter()
            hits = self.reranker.rerank(query, hits)
            timings["rerank_ms"] = (time.perf_counter() - t) * 1000
        hits = hits[:k]
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        best = max(similarity.values()) if similarity else float("nan")
        return Retrieval(hits, best, timings)

    def named_documents(self, question: str) -> list[str]:
        """The doc_ids whose titles `question` names (rag/named.py); the titles are read once per opened index."""
        if self._titles is None:
            self._titles = TitleMatcher(self.store.titles())
        return self._titles.named(question)

    def search(self, query: str, mode: str = "hybrid", k: int = 5, **kwargs) -> list[Hit]:
        return self.retrieve(query, mode, k, **kwargs).hits


def open_index(index_dir: str | Path, embedder=None, rerank: str | None = None, backend: str | None = None, rerank_backend: str = "torch") -> Index:
    """An index opened for search; `backend` (or the embedder's), when given, must be the one that embedded it (auto: whichever did).

    `rerank`: a reranker (tunelab.rag.rerank.open_reranker) run on `rerank_backend`.
    """
    reranker = None
    if rerank:
        from tunelab.rag.rerank import open_reranker

        reranker = open_reranker(rerank, backend=rerank_backend)
    return Index(index_dir, embedder=embedder, reranker=reranker, backend=backend)
