"""The leaderboard: one row per candidate run, all measured on one test set, Pareto fronts, a recommendation.

Quality and training cost come from each run's own metrics.json (nothing is re-derived); inference
latency and throughput are measured here, for every candidate with the same texts, one model after
the other in this process, so the numbers are comparable.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.textpairs import PAIR_COLUMN, ModelInput, frame_inputs

COLUMNS = (
    "rank",
    "candidate",
    "method",
    "model",
    "accuracy",
    "f1_macro",
    "test_loss",
    "eval_loss",
    "train_time_s",
    "train_samples_per_s",
    "peak_memory_mb",
    "parameters",
    "trainable_parameters",
    "size_mb",
    "latency_p50_ms",
    "latency_p95_ms",
    "examples_per_s",
    "pareto_train_time",
    "pareto_latency",
    "run",
)
WARMUP_CALLS = 3  # first calls pay for lazy initialisation (allocators, thread pools): not the user's steady state


def fingerprint_test_set(run: Run) -> dict[str, Any]:
    """A hash of the test split's (text, label) rows — (text, text_pair, label) for a pair classifier — order-free, plus the row count."""
    frame = run.split("test")
    columns = [c for c in ("text", PAIR_COLUMN, "label") if c in frame]
    rows = sorted(zip(*(frame[c].astype(str) for c in columns)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(b"\x1f".join(cell.encode("utf-8") for cell in row) + b"\x1e")
    return {"sha256": digest.hexdigest(), "rows": len(rows)}


def open_runs(paths: dict[str, str | os.PathLike]) -> dict[str, Run]:
    """Open every run and check that all were evaluated on the same test set."""
    runs = {name: Run.open(path) for name, path in paths.items()}
    if not runs:
        raise TunelabError("no runs to compare", "pass two or more run directories, or a compare file")
    for run in runs.values():
        run.require_classification("tunelab compare")
        evaluated = run.metrics.get("evaluated_on", {})
        if "test" not in run.metrics:
            raise TunelabError(f"run '{run.path}' has no test metrics", f"evaluate it first: tunelab eval {run.path}")
        if evaluated.get("source") != "test split":
            raise TunelabError(
                f"run '{run.path}': its metrics.json was last evaluated on '{evaluated.get('source')}', not its test split",
                f"evaluate it on its test split again: tunelab eval {run.path}",
            )
    prints = {name: fingerprint_test_set(run) for name, run in runs.items()}
    first = next(iter(runs))
    for name, fingerprint in prints.items():
        if fingerprint["sha256"] != prints[first]["sha256"]:
            raise TunelabError(
                f"runs '{runs[first].path}' and '{runs[name].path}' were evaluated on different test sets "
                f"({prints[first]['rows']} rows, {prints[first]['sha256'][:12]} vs {fingerprint['rows']} rows, {fingerprint['sha256'][:12]})",
                "compare runs trained on the same data with the same seed and split settings (e.g. from one compare file)",
            )
    return runs


def measurement_texts(run: Run, count: int, seed: int = 0) -> list[ModelInput]:
    """The same test texts (or text pairs) for every candidate: a seeded sample of the shared test split."""
    texts = sorted(frame_inputs(run.split("test")))  # sorted first: independent of row order
    random.Random(seed).shuffle(texts)
    return (texts * (count // max(1, len(texts)) + 1))[:count]


def load_scorer(run: Run):
    if run.kind == "sklearn":
        from tunelab.models.linear import BaselineClassifier

        return BaselineClassifier.load(run)
    from tunelab.models.classifier import Classifier

    return Classifier.load(run.model_dir, max_length=run.config.get("max_length"))


def measure_inference(run: Run, latency_texts: Sequence[ModelInput], throughput_texts: Sequence[ModelInput], batch_size: int = 32) -> dict[str, float]:
    """Single-text latency p50/p95 (what one request waits) and batched examples/s (bulk scoring)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per candidate is noise here
    scorer = load_scorer(run)
    try:
        for text in latency_texts[:WARMUP_CALLS]:
            scorer.logits([text], batch_size=1)
        latencies = []
        for text in latency_texts:
            start = time.perf_counter()
            scorer.logits([text], batch_size=1)
            latencies.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        scorer.logits(list(throughput_texts), batch_size=batch_size)
        seconds = time.perf_counter() - start
    finally:
        del scorer
        gc.collect()
    return {
        "latency_p50_ms": float(statistics.median(latencies)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "examples_per_s": len(throughput_texts) / seconds if seconds > 0 else None,
    }


def size_on_disk_mb(run: Run) -> float:
    """What deploying the model means copying: model/ for a fine-tuned run, model.joblib (+ encoder/) for a baseline."""
    from tunelab.hardware import disk_mb

    parts = [run.path / "model"] if run.kind == "transformers" else [run.path / "model.joblib", run.path / "encoder"]
    return disk_mb(*parts)


def candidate_row(name: str, run: Run, inference: dict[str, float]) -> dict[str, Any]:
    from tunelab.compare.runner import eval_loss

    metrics = run.metrics
    train = metrics.get("train", {})
    config = run.config
    return {
        "candidate": name,
        "method": config.get("method", "full"),
        "model": "—" if config.get("method") == "tfidf-logreg" else Path(str(config.get("model", "?"))).name,
        "accuracy": metrics["accuracy"],
        "f1_macro": metrics["f1_macro"],
        "test_loss": metrics["loss"],
        "eval_loss": eval_loss(run),
        "train_time_s": train.get("train_runtime_s"),
        "train_samples_per_s": train.get("train_samples_per_second"),
        "peak_memory_mb": train.get("peak_memory_mb"),
        "parameters": train.get("parameters"),
        "trainable_parameters": train.get("trainable_parameters"),
        "size_mb": size_on_disk_mb(run),
        **inference,
        "run": str(run.path),
    }


def pareto_optimal(rows: list[dict[str, Any]], cost: str, quality: str = "accuracy") -> list[bool]:
    """True where no other row is at least as accurate and at least as cheap, and better in one of the two."""
    flags = []
    for row in rows:
        if row.get(cost) is None:
            flags.append(False)
            continue
        dominated = any(
            other is not row
            and other.get(cost) is not None
            and other[quality] >= row[quality]
            and other[cost] <= row[cost]
            and (other[quality] > row[quality] or other[cost] < row[cost])
            for other in rows
        )
        flags.append(not dominated)
    return flags


def recommend(rows: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any]:
    """Best accuracy overall; and, with a budget, the most accurate candidate whose p95 latency fits it."""
    by_quality = sorted(rows, key=lambda r: (-r["accuracy"], -r["f1_macro"], r.get("latency_p95_ms") or float("inf")))
    best = by_quality[0]
    lines = [
        f"Best accuracy: {best['candidate']} (accuracy {best['accuracy']:.4f}, macro-F1 {best['f1_macro']:.4f}, p95 latency {best['latency_p95_ms']:.1f} ms)."
    ]
    within = None
    if budget_ms is not None:
        fitting = [r for r in by_quality if r.get("latency_p95_ms") is not None and r["latency_p95_ms"] <= budget_ms]
        if fitting:
            within = fitting[0]
            lines.append(
                f"Best within a {budget_ms:g} ms p95 latency budget: {within['candidate']} "
                f"(accuracy {within['accuracy']:.4f}, p95 latency {within['latency_p95_ms']:.1f} ms)."
            )
        else:
            fastest = min(rows, key=lambda r: r.get("latency_p95_ms") or float("inf"))
            lines.append(
                f"No candidate fits a {budget_ms:g} ms p95 latency budget; the fastest is {fastest['candidate']} "
                f"({fastest['latency_p95_ms']:.1f} ms p95, accuracy {fastest['accuracy']:.4f})."
            )
    return {"best": best["candidate"], "within_budget": within["candidate"] if within else None, "latency_budget_ms": budget_ms, "text": " ".join(lines)}


def build_rows(runs: dict[str, Run], latency_texts: int, throughput_texts: int, progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    first = next(iter(runs.values()))
    single = measurement_texts(first, latency_texts)
    bulk = measurement_texts(first, throughput_texts, seed=1)
    rows = []
    for name, run in runs.items():
        if progress:
            progress(name)
        rows.append(candidate_row(name, run, measure_inference(run, single, bulk)))
    rows.sort(key=lambda r: (-r["accuracy"], -r["f1_macro"], r.get("latency_p95_ms") or float("inf")))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    for cost, column in (("train_time_s", "pareto_train_time"), ("latency_p50_ms", "pareto_latency")):
        for row, flag in zip(rows, pareto_optimal(rows, cost)):
            row[column] = flag
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


# -- writing ------------------------------------------------------------------------------------------

MD_HEADERS = {
    "rank": "#",
    "candidate": "candidate",
    "method": "method",
    "model": "model",
    "accuracy": "accuracy",
    "f1_macro": "macro-F1",
    "test_loss": "test loss",
    "eval_loss": "eval loss",
    "train_time_s": "train s",
    "train_samples_per_s": "train samples/s",
    "peak_memory_mb": "peak MB",
    "parameters": "params",
    "trainable_parameters": "trainable",
    "size_mb": "disk MB",
    "latency_p50_ms": "p50 ms",
    "latency_p95_ms": "p95 ms",
    "examples_per_s": "examples/s",
    "pareto_train_time": "Pareto (train time)",
    "pareto_latency": "Pareto (latency)",
}


def format_value(column: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "★" if value else ""
    if column in ("accuracy", "f1_macro", "test_loss", "eval_loss"):
        return f"{value:.4f}"
    if column in ("parameters", "trainable_parameters"):
        return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,}"
    if column in ("latency_p50_ms", "latency_p95_ms"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], recommendation: str, header: str) -> str:
    columns = [c for c in COLUMNS if c != "run"]
    lines = [
        header,
        "",
        "| " + " | ".join(MD_HEADERS[c] for c in columns) + " |",
        "|" + "|".join("---" if c in ("candidate", "method", "model") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(format_value(c, row[c]) for c in columns) + " |" for row in rows]
    lines += ["", recommendation, ""]
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(index=False)
