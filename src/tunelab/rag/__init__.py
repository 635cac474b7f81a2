"""Retrieval-augmented generation: index documents, search them (BM25, dense, hybrid), answer with citations.

from tunelab import rag
rag.build_index("factbook", "indexes/factbook")
with rag.open_index("indexes/factbook") as index:
    for hit in index.search("What is the capital of France?", mode="hybrid", k=5):
        print(hit.rank, hit.chunk.title, hit.chunk.section, hit.score)
"""

from tunelab.rag.answer import Answer, answer, answer_many
from tunelab.rag.index import MODES, Hit, Index, IndexReport, build_index, open_index

__all__ = ["MODES", "Answer", "Hit", "Index", "IndexReport", "answer", "answer_many", "build_index", "open_index"]
