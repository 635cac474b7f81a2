"""The default store: LanceDB embedded in the index folder, plus a bm25s keyword index beside it.

index/
  lancedb/chunks.lance   chunk_id, doc_id, title, section, text, position, vector
  bm25/                  bm25s index over the same chunks (rebuilt on every index run: seconds)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from tunelab.atomic import staged_dir
from tunelab.rag.bm25 import BM25Index
from tunelab.rag.chunk import Chunk

TABLE = "chunks"
FIELDS = ("chunk_id", "doc_id", "title", "section", "text", "position")


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class LanceStore:
    def __init__(self, index_dir: Path, dim: int):
        import lancedb

        self.index_dir = Path(index_dir)
        self.dim = dim
        self.db = lancedb.connect(str(self.index_dir / "lancedb"))
        self.schema = pa.schema(
            [
                ("chunk_id", pa.string()),
                ("doc_id", pa.string()),
                ("title", pa.string()),
                ("section", pa.string()),
                ("text", pa.string()),
                ("position", pa.int32()),
                ("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        self.table = self.db.create_table(TABLE, schema=self.schema, exist_ok=True)
        self._chunks: dict[str, Chunk] | None = None
        self._bm25: BM25Index | None = None

    # -- writing -------------------------------------------------------------------------
    def upsert(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        if not chunks:
            return
        self.table.delete(f"chunk_id IN ({_sql_list([c.chunk_id for c in chunks])})")
        columns = {name: [getattr(c, name) for c in chunks] for name in FIELDS}
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        self.table.add(pa.table(columns, schema=self.schema))
        self._chunks = None

    def delete_documents(self, doc_ids: list[str]) -> None:
        for start in range(0, len(doc_ids), 500):  # keep each SQL filter a reasonable size
            self.table.delete(f"doc_id IN ({_sql_list(doc_ids[start : start + 500])})")
        self._chunks = None

    def finish(self) -> None:
        chunks = list(self.chunks().values())
        bm25 = BM25Index.build([c.chunk_id for c in chunks], [c.indexed_text() for c in chunks])
        with staged_dir(self.index_dir / "bm25", overwrite=True, keep_partial=False) as folder:
            bm25.save(folder)
        self._bm25 = bm25
        try:  # merge the small fragments incremental writes leave behind
            self.table.optimize()
        except Exception:  # an optional nicety, never a reason to fail an index run
            pass

    # -- reading -------------------------------------------------------------------------
    def chunks(self) -> dict[str, Chunk]:
        """Every chunk by id, without vectors (kept in memory: search results need their text)."""
        if self._chunks is None:
            rows = self.table.to_arrow().select(list(FIELDS)).to_pylist()
            self._chunks = {row["chunk_id"]: Chunk(**row) for row in rows}
        return self._chunks

    def _keyword_index(self) -> BM25Index:
        if self._bm25 is None:
            folder = self.index_dir / "bm25"
            self._bm25 = BM25Index.load(folder) if (folder / "ids.json").exists() else BM25Index.build([], [])
        return self._bm25

    def dense(self, vector: np.ndarray, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        if k <= 0:
            return []
        search = self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector").distance_type("cosine")
        if doc_ids is not None:
            search = search.where(f"doc_id IN ({_sql_list(list(doc_ids))})", prefilter=True)
        rows = search.select(["chunk_id", "_distance"]).limit(k).to_list()
        chunks = self.chunks()
        return [(chunks[r["chunk_id"]], 1.0 - float(r["_distance"])) for r in rows if r["chunk_id"] in chunks]

    def keyword(self, query: str, k: int, doc_ids: Sequence[str] | None = None) -> list[tuple[Chunk, float]]:
        chunks = self.chunks()
        wanted = None if doc_ids is None else set(doc_ids)
        keep = None if wanted is None else {cid for cid, chunk in chunks.items() if chunk.doc_id in wanted}
        return [(chunks[cid], score) for cid, score in self._keyword_index().search(query, k, keep) if cid in chunks]

    def titles(self) -> dict[str, str]:
        return {chunk.doc_id: chunk.title for chunk in self.chunks().values()}

    def count(self) -> int:
        return self.table.count_rows()

    def close(self) -> None:
        pass

    @staticmethod
    def remove(index_dir: Path) -> None:
        shutil.rmtree(Path(index_dir) / "lancedb", ignore_errors=True)
        shutil.rmtree(Path(index_dir) / "bm25", ignore_errors=True)
