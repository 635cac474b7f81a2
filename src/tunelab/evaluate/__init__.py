"""Evaluation a person can read: metrics, plots, an HTML report, error analysis and a bias probe.

metrics.py (numbers, scikit-learn's formulas), plots.py (PNG), report.py (self-contained HTML),
generalisation.py (over-fitting check), bias.py (term-swap probe); pipeline.py ties them to a run.
"""

from tunelab.evaluate.pipeline import evaluate_run

__all__ = ["evaluate_run"]
