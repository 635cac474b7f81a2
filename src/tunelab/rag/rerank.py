"""Optional second stage: a model reads (query, chunk) pairs and re-orders the candidates.

`--rerank` takes a local cross-encoder folder (sentence-transformers' CrossEncoder), or a tunelab run
of `tunelab train --task pair-classification` — e.g. one trained on the built-in factbook-relevance
pairs, whose passages are written as the index writes its chunks — scored through tunelab's runtime,
a chunk's score being the run's probability of its relevant label. Nothing is downloaded.

A run reranks on the inference backend asked for (`--rerank-backend`, one of tunelab.backends.CHOICES),
loaded, exported on first use and gated as `predict --backend` loads it (tunelab.runtime.choice.load_scorer):
a backend that fails its parity gate on the run's test pairs is refused in one line, and `auto` passes it
over, saying why. A cross-encoder folder runs on torch only: it has no test split to gate another backend
on, and sentence-transformers' own `backend=` needs Optimum, whose releases pin transformers below 5.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.runtime.choice import Say, check_backend_name, say_on_stderr

# The label of a pair-classification run that means "this passage is relevant to the query", tried in order.
RELEVANT_LABELS = ("relevant", "yes", "true", "1", "positive")


def open_reranker(model: str | Path, batch_size: int = 32, backend: str = "torch", say: Say | None = None):
    """A RunReranker for a tunelab run directory on `backend`, else a CrossEncoderReranker for a model folder (torch only)."""
    check_backend_name(backend)
    path = Path(model).expanduser()
    if (path / "config.yaml").is_file():
        return RunReranker(path, batch_size, backend, say)
    if backend not in ("torch", "auto"):
        raise TunelabError(
            f"a cross-encoder folder reranks on torch only, not {backend} ('{model}' is not a tunelab run)",
            "leave out --rerank-backend, or rerank with a run of `tunelab train --task pair-classification`, which runs on every backend",
        )
    reranker = CrossEncoderReranker(path, batch_size)
    if backend == "auto":
        (say or say_on_stderr)("rerank backend auto: torch (a cross-encoder folder runs on torch only)")
    return reranker


def by_score(hits: list, scores) -> list:
    """Hits sorted by the reranker's score (which becomes their score)."""
    for hit, score in zip(hits, scores):
        hit.score = float(score)
    return sorted(hits, key=lambda hit: -hit.score)


class CrossEncoderReranker:
    def __init__(self, model: str | Path, batch_size: int = 32):
        from sentence_transformers import CrossEncoder

        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise TunelabError(
                f"no cross-encoder model or tunelab run at '{model}'",
                "pass --rerank a local cross-encoder folder (e.g. a saved ms-marco-MiniLM model) or a run of `tunelab train --task pair-classification`",
            )
        self.model = CrossEncoder(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def rerank(self, query: str, hits: list) -> list:
        scores = self.model.predict([(query, hit.chunk.indexed_text()) for hit in hits], batch_size=self.batch_size, show_progress_bar=False)
        return by_score(hits, scores)


class RunReranker:
    """A pair-classification run as the reranker: (query, chunk text) pairs scored by P(relevant label)."""

    def __init__(self, run_dir: str | Path, batch_size: int = 32, backend: str = "torch", say: Say | None = None):
        from tunelab.run import Run
        from tunelab.runtime import load_scorer

        run = Run.open(run_dir)
        if not run.is_pair_classifier:
            raise TunelabError(
                f"run '{run.path}' is a {run.task} run; a reranker reads (query, passage) pairs",
                "pass --rerank a run of `tunelab train --task pair-classification` (e.g. --data factbook-relevance)",
            )
        labels = run.labels
        relevant = next((label for name in RELEVANT_LABELS for label in labels if label.lower() == name), None)
        if relevant is None:
            raise TunelabError(
                f"run '{run.path}' has no label that means relevant (labels: {', '.join(labels)})",
                f"train it with one of the labels {', '.join(RELEVANT_LABELS)} for the relevant pairs",
            )
        self.scorer = load_scorer(run, backend, say=say)
        self.column = labels.index(relevant)
        self.batch_size = batch_size

    def rerank(self, query: str, hits: list) -> list:
        probabilities = self.scorer.predict_proba([(query, hit.chunk.indexed_text()) for hit in hits], self.batch_size)
        return by_score(hits, probabilities[:, self.column])
