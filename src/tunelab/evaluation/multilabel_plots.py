"""The multi-label report's plots: per-label ROC curves and the label co-occurrence heat map, beside
the training curves every report shows. Drawn with the classifier plots' helpers (evaluation/plots.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.evaluation.plots import heat_map, roc_plot


def label_set_plots(out_dir: Path, y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], metrics: dict[str, Any]) -> dict[str, Path]:
    """The multi-label report's plots beside the training curves; returns name -> PNG path."""
    return {
        "roc": roc_plot(y_true, proba, labels, metrics["roc_auc"]["per_label"], out_dir / "roc.png"),
        "cooccurrence": cooccurrence_plot(metrics["cooccurrence"]["counts"], labels, out_dir / "cooccurrence.png"),
    }


def cooccurrence_plot(counts: list[list[int]], labels: Sequence[str], path: Path) -> Path:
    """Rows holding both labels (the diagonal: rows holding the label)."""
    matrix = np.asarray(counts, dtype=float)
    diagonal = np.diag(matrix)
    # Coloured by the share of the row label's rows, so a rare label's partners show as clearly as a common one's.
    share = np.divide(matrix, diagonal[:, None], out=np.zeros_like(matrix), where=diagonal[:, None] > 0)
    return heat_map(
        counts, share, labels, path, "Label co-occurrence on the test rows (counts)", "share of the row label's rows", "also has", "rows with", cmap="Purples"
    )
