"""Evaluation a person can read: metrics, plots, an HTML report, error analysis and a bias probe.

metrics.py (numbers, scikit-learn's formulas), plots.py (PNG), report.py (self-contained HTML),
generalisation.py (over-fitting check), bias.py (term-swap probe); pipeline.py ties them to a run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package (e.g. tunelab/__init__ binding its names) costs nothing
    # until an evaluation actually runs: pipeline pulls in pandas, scikit-learn and friends.
    if name == "evaluate_run":
        from tunelab.evaluate.pipeline import evaluate_run

        return evaluate_run
    raise AttributeError(f"module 'tunelab.evaluate' has no attribute '{name}'")
