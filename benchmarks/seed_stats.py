"""Mean and spread over seeds of a benchmark's per-seed figures (imported by the scripts beside it, run as `python benchmarks/X.py`)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def mean_std(per_seed: list[dict], side: str, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """{name: {mean, std}} of per_seed[i][side][name] over the seeds that have it (std 0 for one seed)."""
    out = {}
    for name in names:
        values = [seed[side][name] for seed in per_seed if seed[side].get(name) is not None]
        if values:
            out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out
