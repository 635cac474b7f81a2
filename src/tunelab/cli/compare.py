"""`tunelab compare`: train the candidates of a compare file, or rank existing runs; print the leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tunelab.backends import CHOICES_HELP
from tunelab.cli._app import command, console
from tunelab.errors import TunelabError


@command("compare")
def compare_command(
    sources: Annotated[
        list[Path],
        typer.Argument(help="A compare file (compare.yaml), or two or more finished run directories.", show_default=False),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Compare folder (default: the file's out:, or compares/<time>).")] = None,
    latency_budget_ms: Annotated[
        float | None, typer.Option("--latency-budget-ms", min=0, help="Also recommend the most accurate candidate with p95 latency within this.")
    ] = None,
    latency_texts: Annotated[int, typer.Option("--latency-texts", min=1, help="Existing runs: test texts timed one by one.")] = 50,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help=f"What the fine-tuned candidates' latency is measured on (default: the file's backend:, else torch): {CHOICES_HELP}"),
    ] = None,
) -> None:
    """Compare models on one test set: leaderboard.csv/.md, Pareto plots and compare.html."""
    from tunelab.compare import compare, compare_runs
    from tunelab.runtime.choice import check_backend_name

    if backend is not None:
        check_backend_name(backend)  # one line before any training

    files = [s for s in sources if s.is_file()]
    if files:
        if len(sources) != 1:
            raise TunelabError("pass either one compare file or run directories, not both", f"e.g. tunelab compare {files[0]}")
        summary = compare(files[0], out=out, latency_budget_ms=latency_budget_ms, backend=backend)
    else:
        missing = [s for s in sources if not s.exists()]
        if missing:
            raise TunelabError(f"'{missing[0]}' does not exist", "pass a compare file or finished run directories")
        if len(sources) < 2:
            raise TunelabError("comparing needs two or more runs", "pass more run directories, or a compare file")
        summary = compare_runs(sources, out=out, latency_budget_ms=latency_budget_ms, latency_texts=latency_texts, backend=backend or "torch")
    _print(summary)


def _print(summary: dict[str, Any]) -> None:
    from tunelab.compare.leaderboard import MD_HEADERS, QUALITY, format_value

    quality = QUALITY[summary["task"]]
    shown = (
        "rank",
        "candidate",
        "method",
        *quality[:2],
        "train_time_s",
        "peak_memory_mb",
        "trainable_parameters",
        "size_mb",
        "backend",
        "latency_p50_ms",
        "latency_p95_ms",
        "examples_per_s",
    )
    headers = {
        "rank": "#",
        **{column: MD_HEADERS[column] for column in quality[:2]},
        "train_time_s": "train s",
        "peak_memory_mb": "peak MB",
        "trainable_parameters": "trainable",
        "size_mb": "disk MB",
        "latency_p50_ms": "p50 ms",
        "latency_p95_ms": "p95 ms",
        "examples_per_s": "ex/s",
    }
    table = Table(title=f"test set: {summary['test_set']['rows']} rows")
    for column in shown:
        table.add_column(headers.get(column, column), justify="left" if column in ("candidate", "method", "backend") else "right")
    for row in summary["rows"]:
        star = " ★" if row["pareto_latency"] or row["pareto_train_time"] else ""
        table.add_row(*[format_value(c, row[c]) + (star if c == "candidate" else "") for c in shown])
    console.print(table)
    console.print(f"★ Pareto-optimal ({MD_HEADERS[quality[0]]} vs train time or latency)", style="dim")
    console.print(summary["recommendation"]["text"], highlight=False)
    console.print(f"report: {summary['files']['compare.html']}", highlight=False, soft_wrap=True)
