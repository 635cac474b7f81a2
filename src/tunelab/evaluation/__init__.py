"""Evaluation a person can read: metrics, plots, an HTML report, error analysis and a bias probe.

metrics.py (numbers, scikit-learn's formulas), plots.py (PNG), report.py (self-contained HTML),
generalisation.py (over-fitting check), bias.py (term-swap probe); pipeline.py ties them to a run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing one of the package's modules (metrics, plots) does not pull in what the
    # pipeline needs until an evaluation actually runs: pandas, scikit-learn, the runtime and friends.
    if name == "evaluate_run":
        from tunelab.evaluation.pipeline import evaluate_run

        return evaluate_run
    raise AttributeError(f"module 'tunelab.evaluation' has no attribute '{name}'")
