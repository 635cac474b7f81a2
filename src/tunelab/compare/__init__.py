"""Comparing models: candidates trained on identical splits, one leaderboard, accuracy against cost.

    from tunelab.compare import compare, compare_runs
    summary = compare("compare.yaml", latency_budget_ms=20)      # train the candidates, then rank them
    summary = compare_runs(["runs/a", "runs/b"], out="compares/ab")  # rank runs that exist already

Candidates of one task: classification (with the scikit-learn baselines), pair classification,
multi-label or token classification (`task:` in the compare file), each ranked by its own headline figure.

config.py (compare.yaml), runner.py (training, resume, search), leaderboard.py (rows, latency,
Pareto, recommendation), report.py (plots, compare.html).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunelab import atomic
from tunelab.compare.config import CompareConfig, load_compare_config
from tunelab.run import out_dir

__all__ = ["CompareConfig", "compare", "compare_runs", "load_compare_config"]


def compare(
    config: CompareConfig | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    latency_budget_ms: float | None = None,
    backend: str | None = None,
    progress: bool = True,
    isolate: bool = True,
) -> dict[str, Any]:
    """Train every candidate of a compare file (skipping finished ones) and write the leaderboard.

    isolate: train each candidate in a fresh process (honest peak memory; the default).
    Returns the summary also written to <out>/leaderboard.json.
    """
    from tunelab.compare.config import candidate_config, check_candidates
    from tunelab.compare.runner import train_candidates

    overrides = {"out": str(out) if out else None, "latency_budget_ms": latency_budget_ms, "backend": backend}
    if isinstance(config, CompareConfig):
        config = config.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        if config.out is None:
            raise ValueError("CompareConfig.out must be set")
        check_candidates(config)
    else:
        config = load_compare_config(config, overrides)
    folder = Path(config.out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "compare.yaml", _yaml(config))
    paths, searches = train_candidates(config, progress, isolate)
    data = candidate_config(config, config.candidates[0]).data  # the task's default when the file names none
    return compare_runs(
        paths,
        out=folder,
        latency_budget_ms=config.latency_budget_ms,
        latency_texts=config.latency_texts,
        throughput_texts=config.throughput_texts,
        searches=searches,
        backend=config.backend,
        title=f"Comparison on {data}" if config.task == "classification" else f"Comparison on {data} ({config.task})",
        progress=progress,
    )


def compare_runs(
    runs: list[str | os.PathLike] | dict[str, str | os.PathLike],
    *,
    out: str | os.PathLike | None = None,
    latency_budget_ms: float | None = None,
    latency_texts: int = 50,
    throughput_texts: int = 256,
    searches: dict[str, Any] | None = None,
    backend: str = "torch",
    title: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank finished runs evaluated on the same test set; write leaderboard.{csv,md,json}, plots/, compare.html.

    backend: what each fine-tuned candidate's latency and examples/s are measured on (one of tunelab.backends.CHOICES,
    through tunelab.runtime.choice as predict and serve load it; each row's `backend` names what ran).
    """
    from tunelab.compare import leaderboard as lb
    from tunelab.compare.report import PARETO_AXES, pareto_plot, write_html
    from tunelab.runtime.choice import check_backend_name

    check_backend_name(backend)  # before the output folder is made
    named = runs if isinstance(runs, dict) else _names(runs)
    opened = lb.open_runs(named)
    folder = out_dir(out, "compare", root="compares")
    folder.mkdir(parents=True, exist_ok=True)

    rows = lb.build_rows(opened, latency_texts, throughput_texts, _measuring(progress), backend)
    first = next(iter(opened.values()))
    recommendation = lb.recommend(rows, latency_budget_ms, first.task)
    fingerprint = lb.fingerprint_test_set(first)
    title = title or "Model comparison"
    facts = {
        "data": first.config.get("data"),
        "test set": f"{fingerprint['rows']} rows, sha256 {fingerprint['sha256'][:16]}… (identical for every candidate)",
        "task": first.task,
        "ranked by": lb.RANKED_BY[first.task],
        "seed": first.config.get("seed"),
        "latency": f"{latency_texts} test texts, one per call, after {lb.WARMUP_CALLS} warm-up calls; p50 and p95",
        "examples/s": f"{throughput_texts} test texts in batches of 32",
        "what is timed": lb.TIMED[first.task],
        "backend": f"--backend {backend} for the fine-tuned candidates (each row names what ran); baselines run on scikit-learn",
        "train time": "from each run's metrics.json (baselines: featurising + fitting, C chosen on the eval split)",
        "peak memory": "peak resident memory of the process that trained the candidate",
    }
    quality = lb.QUALITY[first.task][0]
    plots = [pareto_plot(rows, cost, folder / "plots" / f"{flag}.png", quality) for cost, (flag, _, _) in PARETO_AXES.items()]
    atomic.write_text(folder / "leaderboard.csv", lb.csv_text(rows))
    atomic.write_text(folder / "leaderboard.md", lb.markdown(rows, recommendation["text"], f"## {title}"))
    write_html(
        folder / "compare.html",
        title=title,
        rows=rows,
        recommendation=recommendation["text"],
        plots=plots,
        facts=facts,
        searches=searches or {},
        ranked_by=lb.RANKED_BY[first.task],
    )
    summary = {
        "task": first.task,
        "ranked_by": quality,
        "rows": rows,
        "recommendation": recommendation,
        "test_set": fingerprint,
        "searches": searches or {},
        "out": str(folder),
        "files": {name: str(folder / name) for name in ("leaderboard.csv", "leaderboard.md", "compare.html")},
    }
    atomic.write_json(folder / "leaderboard.json", summary)
    return summary


def _names(paths: list[str | os.PathLike]) -> dict[str, str | os.PathLike]:
    """Candidates are named by their folder; two folders of the same name keep their parent too."""
    names: dict[str, str | os.PathLike] = {}
    for path in paths:
        p = Path(path)
        name = p.name
        if name in names:
            name = f"{p.parent.name}/{p.name}"
        names[name] = path
    return names


def _measuring(progress: bool):
    if not progress:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return lambda name: console.print(f"[dim]measuring inference: {name}[/]", highlight=False)


def _yaml(config: CompareConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=False), sort_keys=False, allow_unicode=True)
