"""BM25 keyword search with bm25s, and the same scores as sparse vectors for Qdrant.

Both stores tokenize the same way and score with Lucene's BM25:
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    tf part = tf / (tf + k1 * (1 - b + b * len / avg_len))
bm25s precomputes idf * tf-part per (token, chunk); Qdrant stores the tf part as a sparse
vector and multiplies in the idf itself (Modifier.IDF), which is the same number.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

K1 = 1.5
B = 0.75


# bm25s' longer English list: the short one keeps "what", "when", "how", ... which are rare in
# documents (high idf) and so dominated the scores of questions.
STOPWORDS = list(STOPWORDS_EN_PLUS)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased words of two or more characters, English stopwords removed (bm25s' tokenizer)."""
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, return_ids=False, show_progress=False)


def query_terms(query: str) -> list[str]:
    # Each distinct query word counts once, in both stores.
    return list(dict.fromkeys(tokenize([query])[0]))


class BM25Index:
    """bm25s over chunk texts, rows aligned with `ids`; saved next to the vector store."""

    def __init__(self, retriever: bm25s.BM25, ids: list[str]):
        self.retriever = retriever
        self.ids = ids

    @classmethod
    def build(cls, ids: list[str], texts: Sequence[str], k1: float = K1, b: float = B) -> BM25Index:
        retriever = bm25s.BM25(method="lucene", k1=k1, b=b)
        if texts:
            retriever.index(tokenize(texts), show_progress=False)
        return cls(retriever, list(ids))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.ids:
            self.retriever.save(str(folder), show_progress=False)
        (folder / "ids.json").write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        ids = json.loads((folder / "ids.json").read_text())
        if not ids:
            return cls(bm25s.BM25(method="lucene"), [])
        return cls(bm25s.BM25.load(str(folder), mmap=False, show_progress=False), ids)

    def search(self, query: str, k: int, keep: Collection[str] | None = None) -> list[tuple[str, float]]:
        """(chunk_id, score) best first; chunks sharing no word with the query are left out, and with `keep`
        every chunk whose id is not in it (bm25s' weight mask: the top k are taken among those kept)."""
        if not self.ids:
            return []
        vocab = self.retriever.vocab_dict
        terms = [t for t in query_terms(query) if t in vocab]
        if not terms:
            return []
        k = min(k, len(self.ids))
        mask = None if keep is None else np.fromiter((cid in keep for cid in self.ids), dtype=np.float32, count=len(self.ids))
        rows, scores = self.retriever.retrieve([terms], k=k, show_progress=False, n_threads=1, weight_mask=mask)
        return [(self.ids[r], float(s)) for r, s in zip(rows[0], scores[0]) if s > 0]


def sparse_vector(tokens: Sequence[str], avg_len: float, vocab: dict[str, int], k1: float = K1, b: float = B) -> tuple[list[int], list[float]]:
    """The tf part of BM25 for one chunk, keyed by each word's id in `vocab` (new words are added).

    A vocabulary kept with the index (rather than hashing words) makes the ids collision-free,
    so Qdrant's scores equal bm25s' exactly.
    """
    counts = Counter(tokens)
    norm = k1 * (1 - b + b * len(tokens) / max(avg_len, 1e-9))
    indices, values = [], []
    for term, tf in counts.items():
        indices.append(vocab.setdefault(term, len(vocab)))
        values.append(float(tf / (tf + norm)))
    return indices, values
