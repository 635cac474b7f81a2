"""The multi-label report's plots: loss and subset-accuracy curves, per-label ROC curves, and the
label co-occurrence heat map. Drawn with the classifier plots' helpers (evaluate/plots.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.evaluate.plots import heat_map, roc_plot, training_curves


def make_multilabel_plots(
    out_dir: str | os.PathLike,
    history: Sequence[dict[str, Any]],
    y_true: np.ndarray,
    proba: np.ndarray,
    labels: Sequence[str],
    metrics: dict[str, Any],
) -> dict[str, Path]:
    """Every plot of the multi-label report; returns name -> PNG path. Plots without data are skipped."""
    out_dir = Path(out_dir)
    plots = training_curves(out_dir, history)
    plots["roc"] = roc_plot(y_true, proba, labels, metrics["roc_auc"]["per_label"], out_dir / "roc.png")
    plots["cooccurrence"] = cooccurrence_plot(metrics["cooccurrence"]["counts"], labels, out_dir / "cooccurrence.png")
    return plots


def cooccurrence_plot(counts: list[list[int]], labels: Sequence[str], path: Path) -> Path:
    """Rows holding both labels (the diagonal: rows holding the label)."""
    matrix = np.asarray(counts, dtype=float)
    diagonal = np.diag(matrix)
    # Coloured by the share of the row label's rows, so a rare label's partners show as clearly as a common one's.
    share = np.divide(matrix, diagonal[:, None], out=np.zeros_like(matrix), where=diagonal[:, None] > 0)
    return heat_map(
        counts, share, labels, path, "Label co-occurrence on the test rows (counts)", "share of the row label's rows", "also has", "rows with", cmap="Purples"
    )
