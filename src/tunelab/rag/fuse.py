"""Reciprocal rank fusion: merge ranked lists by rank, not by their incomparable scores."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

RRF_K = 60  # Cormack et al. (2009); large k flattens the advantage of the very first ranks

# (bm25, dense). Keyword matches count for less than meaning by default: with all-MiniLM on the
# Factbook QA train split, BM25 alone finds the answering document in the top 5 for 89% of
# questions and dense for 99%; weights (1, 1) let BM25's misses push the right chunk down,
# 0.3 keeps its rescues without that (chosen on the train split, see benchmarks/retrieval.py).
# Weaviate's hybrid default (alpha 0.75, i.e. 1:3) leans the same way.
DEFAULT_WEIGHTS = (0.3, 1.0)


def rrf(
    rankings: Sequence[Sequence[Hashable]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[Hashable, float]]:
    """score(d) = sum over lists of weight / (k + rank of d in that list), ranks counted from 1.

    Returns (item, score) best first; ties keep the order in which items were first seen
    (earlier lists first), so the result is deterministic.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    if k < 0:
        raise ValueError("the RRF constant k must be non-negative")
    scores: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])
