"""Optional second stage: a cross-encoder reads (query, chunk) pairs and re-orders the candidates.

Only used when a cross-encoder model folder is given (nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError


class CrossEncoderReranker:
    def __init__(self, model: str | Path, batch_size: int = 32):
        from sentence_transformers import CrossEncoder

        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise TunelabError(
                f"no cross-encoder model at '{model}'",
                "pass --rerank the folder of a local cross-encoder (e.g. a saved ms-marco-MiniLM model)",
            )
        self.model = CrossEncoder(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def rerank(self, query: str, hits: list) -> list:
        """Hits sorted by the cross-encoder's score (which becomes their score)."""
        scores = self.model.predict([(query, hit.chunk.indexed_text()) for hit in hits], batch_size=self.batch_size, show_progress_bar=False)
        for hit, score in zip(hits, scores):
            hit.score = float(score)
        return sorted(hits, key=lambda hit: -hit.score)
