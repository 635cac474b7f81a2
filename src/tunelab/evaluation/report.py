"""report.html: one self-contained file a person opens in a browser, with no server and no network.

Images are embedded as base64 data: URIs and the page has no scripts, so it can be mailed,
attached to a ticket or opened from a laptop long after the run directory is gone.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, select_autoescape

from tunelab.atomic import write_text
from tunelab.evaluation.report_template import TEMPLATE

PLOT_TITLES = {
    "loss": "Training and eval loss",
    "accuracy": "Training and eval accuracy",
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curves (one vs rest)",
    "precision_recall": "Precision-recall curves",
    "reliability": "Reliability diagram",
}
HYPERPARAMETERS = ("epochs", "lr", "batch_size", "grad_accum", "max_length", "layers", "precision", "seed", "text_col", "label_col", "label_sep")


def hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's settings the report lists; `layers` unset means the pretrained model's layers were all kept."""
    return {k: "all" if k == "layers" and config[k] is None else config[k] for k in HYPERPARAMETERS if k in config}


def render_report(
    *,
    run_name: str,
    config: Mapping[str, Any],
    test: Mapping[str, Any],
    evaluated_on: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike],
    mistakes: list[dict[str, Any]],
    generalisation: Mapping[str, Any],
    data_profile: Mapping[str, Any] | None = None,
    train_info: Mapping[str, Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    bias: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    template: str = TEMPLATE,
    plot_titles: Mapping[str, str] = PLOT_TITLES,
    **extra: Any,
) -> str:
    """The report as an HTML string. Every argument is plain data, so it renders without a model.

    template, plot_titles and extra (more names for the template): another task's page, e.g. the
    multi-label report (evaluation/multilabel_report.py)."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True), trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env.from_string(template).render(
        run_name=run_name,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        config=dict(config),
        hyperparameters=hyperparameters(config),
        test=test,
        evaluated_on=evaluated_on,
        plots=[_embed(name, path, plot_titles) for name, path in plots.items()],
        mistakes=mistakes,
        generalisation=generalisation,
        profile=data_profile or {},
        train_info={k: v for k, v in (train_info or {}).items() if isinstance(v, (int, float, str))},
        environment=dict(environment or {}),
        bias=bias,
        baseline=baseline,
        **extra,
    )


def write_report(path: str | os.PathLike, **context: Any) -> Path:
    return write_text(path, render_report(**context))


def _embed(name: str, path: str | os.PathLike, titles: Mapping[str, str] = PLOT_TITLES) -> dict[str, Any]:
    data = Path(path).read_bytes()
    width, height = _png_size(data)
    return {
        "name": name,
        "title": titles.get(name, name.replace("_", " ")),
        "uri": "data:image/png;base64," + base64.b64encode(data).decode("ascii"),
        # Explicit sizes let the browser lay the page out before decoding the images.
        "width": width,
        "height": height,
    }


def _png_size(data: bytes) -> tuple[int, int]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("plots must be PNG files")
    return struct.unpack(">II", data[16:24])


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None or not isinstance(value, str) else value
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def _pct(value: Any) -> str:
    if value is None or not isinstance(value, (int, float)):
        return "—"
    return f"{value:.1%}"
