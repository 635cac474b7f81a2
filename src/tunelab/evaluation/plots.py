"""The evaluation plots, as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot): no display is needed, no global
state is shared between threads, and nothing leaks between figures.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

DPI = 110
MAX_ANNOTATED_CLASSES = 20  # beyond this, numbers in confusion-matrix cells become unreadable


def classification_plots(out_dir: Path, y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], metrics: dict[str, Any]) -> dict[str, Path]:
    """The classifier report's plots beside the training curves; returns name -> PNG path."""
    cm = metrics["confusion_matrix"]
    return {
        "confusion_matrix": confusion_matrix_plot(cm["counts"], cm["normalized"], labels, out_dir / "confusion_matrix.png"),
        "roc": roc_plot(y_true, proba, labels, metrics["roc_auc"]["per_class"], out_dir / "roc.png"),
        "precision_recall": pr_plot(y_true, proba, labels, metrics["average_precision"]["per_class"], out_dir / "precision_recall.png"),
        "reliability": reliability_plot(metrics["calibration"], out_dir / "reliability.png"),
    }


def training_curves(out_dir: Path, history: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """The loss and accuracy curves of history.jsonl, each drawn when the history has its values (every report shows them first)."""
    plots: dict[str, Path] = {}
    train = [h for h in history if h.get("type") == "train"]
    evals = [h for h in history if h.get("type") == "eval"]
    if any("loss" in h for h in train) or any("eval_loss" in h for h in evals):
        plots["loss"] = loss_curves(train, evals, out_dir / "loss.png")
    if any("train_accuracy" in h for h in train + evals) or any("eval_accuracy" in h for h in evals):
        plots["accuracy"] = accuracy_curves(train, evals, out_dir / "accuracy.png")
    return plots


def loss_curves(train: list[dict], evals: list[dict], path: Path) -> Path:
    fig, ax = _figure()
    _line(ax, train, "loss", "training loss", alpha=0.8)
    _line(ax, evals, "eval_loss", "eval loss", marker="o")
    ax.set_xlabel(_x_label(train + evals))
    ax.set_ylabel("cross-entropy loss")
    ax.set_title("Loss")
    _epoch_axis(ax, train + evals)
    ax.legend()
    return _save(fig, path)


def accuracy_curves(train: list[dict], evals: list[dict], path: Path) -> Path:
    fig, ax = _figure()
    _line(ax, train, "train_accuracy", "training accuracy (running)", alpha=0.8)
    _line(ax, evals, "train_accuracy", "training accuracy (epoch)", marker="s")
    _line(ax, evals, "eval_accuracy", "eval accuracy", marker="o")
    ax.set_xlabel(_x_label(train + evals))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy")
    _epoch_axis(ax, train + evals)
    ax.legend()
    return _save(fig, path)


def confusion_matrix_plot(counts: list[list[int]], normalized: list[list[float]], labels: Sequence[str], path: Path) -> Path:
    # Colour by the row-normalised share so a small class's errors are as visible as a large one's.
    return heat_map(
        counts, normalized, labels, path, "Confusion matrix (counts; colour = row share)", "share of the true class", "predicted label", "true label"
    )


def heat_map(
    counts: list[list[int]],
    shares: list[list[float]] | np.ndarray,
    labels: Sequence[str],
    path: Path,
    title: str,
    colour_label: str,
    x_label: str = "",
    y_label: str = "",
    cmap: str = "Blues",
) -> Path:
    """A labels x labels matrix: cells coloured by a share in [0, 1], annotated with their counts."""
    k = len(labels)
    size = min(4.0 + 0.45 * k, 14.0)
    fig, ax = _figure(size=(size + 1.0, size))
    norm = np.asarray(shares, dtype=float)
    image = ax.imshow(norm, cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=colour_label)
    ax.set_xticks(range(k), labels=[_short(x) for x in labels], rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels=[_short(x) for x in labels])
    if x_label:
        ax.set_xlabel(x_label)
    if y_label:
        ax.set_ylabel(y_label)
    ax.set_title(title)
    if k <= MAX_ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(counts[i][j])), ha="center", va="center", fontsize=9, color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def roc_plot(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], auc: dict[str, float | None], path: Path) -> Path:
    """One curve per class; y_true holds class ids, or (multi-label) one 0/1 column per label."""
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    indicator = np.ndim(y_true) == 2
    # In a binary task the two one-vs-rest curves are mirror images; one of them says it all.
    shown = [1] if len(labels) == 2 and not indicator else range(len(labels))
    for i in shown:
        if auc.get(labels[i]) is None:
            continue
        fpr, tpr, _ = roc_curve(y_true[:, i] if indicator else y_true == i, proba[:, i])
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{_short(labels[i])} (AUC {auc[labels[i]]:.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (per label)" if indicator else "ROC curves (one vs rest)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_plot(y_true: np.ndarray, proba: np.ndarray, labels: Sequence[str], ap: dict[str, float | None], path: Path) -> Path:
    fig, ax = _figure()
    shown = [1] if len(labels) == 2 else range(len(labels))
    for i in shown:
        if ap.get(labels[i]) is None:
            continue
        precision, recall, _ = precision_recall_curve(y_true == i, proba[:, i])
        ax.step(recall, precision, where="post", linewidth=1.5, label=f"{_short(labels[i])} (AP {ap[labels[i]]:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Precision-recall curves (one vs rest)")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def reliability_plot(calibration: dict[str, Any], path: Path) -> Path:
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    confidence = calibration["bin_confidence"]
    accuracy = calibration["bin_accuracy"]
    counts = calibration["bin_count"]
    width = 1.0 / calibration["n_bins"]
    ax.bar(confidence, accuracy, width=width * 0.9, alpha=0.7, edgecolor="black", label="accuracy in bin")
    for x, y, n in zip(confidence, accuracy, counts):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {calibration['ece']:.3f}; numbers = examples per bin)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


# helpers ----------------------------------------------------------------------------
def _figure(size: tuple[float, float] = (6.4, 4.4)):
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _x(h: dict) -> float | None:
    return h.get("step", h.get("epoch"))


def _x_label(rows: list[dict]) -> str:
    return "step" if any("step" in h for h in rows) else "epoch"


def _line(ax, rows: list[dict], key: str, label: str, **style) -> None:
    points = [(_x(h), h[key]) for h in rows if isinstance(h.get(key), (int, float)) and _x(h) is not None]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label, **style)


def _epoch_axis(ax, rows: list[dict]) -> None:
    """Mark epoch boundaries on a step axis, so curves can be read per epoch too."""
    for h in rows:
        if h.get("type") == "eval" and "step" in h and "epoch" in h:
            ax.axvline(h["step"], color="lightgrey", linewidth=0.8, zorder=0)


def _short(label: str, limit: int = 18) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
