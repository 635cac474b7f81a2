"""Reciprocal rank fusion: merge ranked lists by rank, not by their incomparable scores."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

RRF_K = 60  # Cormack et al. (2009); large k flattens the advantage of the very first ranks

# (bm25, dense). Equal by default: the standard, corpus-agnostic RRF. A weight below 1 on one
# list means its items can only surface when the other list also found them (0.5 / 61 ranks below
# every other-list-only candidate up to rank 62), which throws away keyword rescues of names, codes
# and numbers. benchmarks/retrieval.py shows the trade-off on the Factbook and picks a weight on
# its train split; pass --weights to use it.
DEFAULT_WEIGHTS = (1.0, 1.0)


def rrf(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K, weights: Sequence[float] | None = None) -> list[tuple[Hashable, float]]:
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
