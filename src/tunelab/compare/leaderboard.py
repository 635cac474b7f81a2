"""The leaderboard: one row per candidate run, all measured on one test set, Pareto fronts, a recommendation.

Quality and training cost come from each run's own metrics.json (nothing is re-derived); inference
latency and throughput are measured here, for every candidate with the same texts, one model after
the other in this process, so the numbers are comparable. Each fine-tuned candidate runs on the backend
asked for (runtime/choice.py: torch by default, any of tunelab.backends.CHOICES behind its parity gate),
named in its row's `backend`; a scikit-learn baseline has one runtime of its own.
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

# The tasks' names as Run.task gives them (the modules that define them import torch; this one is read by the CLI's printing).
PAIR_TASK, MULTI_LABEL_TASK, TOKEN_TASK = "pair-classification", "multi-label", "token-classification"
# Each task's test figures, read from its runs' metrics.json (test_loss is its "loss"); the first ranks the candidates.
QUALITY: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "test_loss"),
    PAIR_TASK: ("accuracy", "f1_macro", "test_loss"),
    MULTI_LABEL_TASK: ("f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "test_loss"),
    TOKEN_TASK: ("f1_micro", "f1_macro", "precision_micro", "recall_micro", "word_accuracy"),
}
# What the first figure is, in the page's words.
RANKED_BY = {
    "classification": "test accuracy",
    PAIR_TASK: "test accuracy",
    MULTI_LABEL_TASK: "test micro-F1 (each label at its threshold chosen on the eval split)",
    TOKEN_TASK: "test entity micro-F1 (seqeval, exact spans)",
}
# What one latency call does, by task.
TIMED = {
    "classification": "a text in, class logits out",
    PAIR_TASK: "a text pair in, class logits out",
    MULTI_LABEL_TASK: "a text in, one logit per label out",
    TOKEN_TASK: "a text in, its entity spans out (word split, tagging, spans)",
}
QUALITY_COLUMNS = tuple(dict.fromkeys(column for figures in QUALITY.values() for column in figures))
COLUMNS = (
    "rank",
    "candidate",
    "method",
    "model",
    *QUALITY_COLUMNS,
    "eval_loss",
    "train_time_s",
    "train_samples_per_s",
    "peak_memory_mb",
    "parameters",
    "trainable_parameters",
    "size_mb",
    "backend",
    "latency_p50_ms",
    "latency_p95_ms",
    "examples_per_s",
    "pareto_train_time",
    "pareto_latency",
    "run",
)
WARMUP_CALLS = 3  # first calls pay for lazy initialisation (allocators, thread pools): not the user's steady state
# What a test row is, by task: (text, label), (text, text_pair, label), (text, label set), (words, tags).
ROW_COLUMNS = ("text", PAIR_COLUMN, "label", "labels", "words", "tags")


def columns(task: str) -> list[str]:
    """The leaderboard's columns for runs of one task: its own figures (headline first), then the costs."""
    return [*COLUMNS[:4], *QUALITY[task], *(c for c in COLUMNS[4:] if c not in QUALITY_COLUMNS)]


def fingerprint_test_set(run: Run) -> dict[str, Any]:
    """A hash of the test split's rows (ROW_COLUMNS, those it has), order-free, plus the row count."""
    frame = run.split("test")
    present = [c for c in ROW_COLUMNS if c in frame]
    rows = sorted(zip(*([_cell(value) for value in frame[c]] for c in present)))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(b"\x1f".join(cell.encode("utf-8") for cell in row) + b"\x1e")
    return {"sha256": digest.hexdigest(), "rows": len(rows)}


def _cell(value: Any) -> str:
    """A cell as text; a list (a label set, a sentence's words or tags) item by item, never numpy's shortened print."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return "\x1d".join(str(item) for item in value)
    return str(value)


def open_runs(paths: dict[str, str | os.PathLike]) -> dict[str, Run]:
    """Open every run and check that all were evaluated on the same test set."""
    runs = {name: Run.open(path) for name, path in paths.items()}
    if not runs:
        raise TunelabError("no runs to compare", "pass two or more run directories, or a compare file")
    first = next(iter(runs.values()))
    for run in runs.values():
        if run.task not in QUALITY:
            raise TunelabError(f"tunelab compare does not handle {run.task} runs ('{run.path}' is one)", f"it compares runs of: {', '.join(QUALITY)}")
        if run.task != first.task:
            raise TunelabError(
                f"runs '{first.path}' ({first.task}) and '{run.path}' ({run.task}) learn different tasks",
                "compare runs of one task, trained on the same data",
            )
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


SKLEARN_BACKEND = "scikit-learn"  # a baseline candidate's `backend`: it has no other


def timed_scorer(run: Run, backend: str = "torch") -> tuple[Callable[[Sequence[ModelInput], int], Any], str]:
    """What is timed, as (inputs, batch size) -> answers, and the backend it runs on: a classifier's logits; a multi-label
    classifier's logits (its thresholds are one comparison per label more); a tagger's entities of each text (word split,
    tags, spans). A fine-tuned run is loaded on `backend` as predict loads it; a baseline runs on scikit-learn whatever it is."""
    if run.kind == "sklearn":
        from tunelab.models.linear import BaselineClassifier

        return BaselineClassifier.load(run).logits, SKLEARN_BACKEND
    from tunelab.prediction import multilabel_classifier, token_tagger

    tagger = token_tagger(run, backend)
    if tagger is not None:
        return tagger.entities, tagger.backend
    multi_label = multilabel_classifier(run, backend)
    if multi_label is not None:
        return multi_label.logits, multi_label.backend
    from tunelab.runtime import load_scorer

    scorer = load_scorer(run, backend)
    return scorer.logits, scorer.backend


def measure_inference(
    run: Run, latency_texts: Sequence[ModelInput], throughput_texts: Sequence[ModelInput], batch_size: int = 32, backend: str = "torch"
) -> dict[str, Any]:
    """Single-text latency p50/p95 (what one request waits) and batched examples/s (bulk scoring), on `backend`."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar per candidate is noise here
    score, used = timed_scorer(run, backend)
    try:
        for text in latency_texts[:WARMUP_CALLS]:
            score([text], 1)
        latencies = []
        for text in latency_texts:
            start = time.perf_counter()
            score([text], 1)
            latencies.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        score(list(throughput_texts), batch_size)
        seconds = time.perf_counter() - start
    finally:
        del score
        gc.collect()
    return {
        "backend": used,
        "latency_p50_ms": float(statistics.median(latencies)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "examples_per_s": len(throughput_texts) / seconds if seconds > 0 else None,
    }


def size_on_disk_mb(run: Run) -> float:
    """What deploying the model means copying: model/ for a fine-tuned run, model.joblib (+ encoder/) for a baseline."""
    from tunelab.hardware import disk_mb

    parts = [run.path / "model"] if run.kind == "transformers" else [run.path / "model.joblib", run.path / "encoder"]
    return disk_mb(*parts)


def candidate_row(name: str, run: Run, inference: dict[str, Any]) -> dict[str, Any]:
    from tunelab.compare.runner import eval_loss

    metrics = run.metrics
    train = metrics.get("train", {})
    config = run.config
    figures = {column: metrics.get("loss" if column == "test_loss" else column) for column in QUALITY[run.task]}
    return {
        "candidate": name,
        "method": config.get("method", "full"),
        "model": "—" if config.get("method") == "tfidf-logreg" else Path(str(config.get("model", "?"))).name,
        **figures,
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


def quality_order(task: str) -> Callable[[dict[str, Any]], tuple]:
    """The leaderboard's order: the task's first figure, then its second, then the lower p95 latency."""
    first, second = QUALITY[task][:2]
    return lambda r: (-r[first], -r[second], r.get("latency_p95_ms") or float("inf"))


def recommend(rows: list[dict[str, Any]], budget_ms: float | None, task: str = "classification") -> dict[str, Any]:
    """The best candidate by the task's first figure; and, with a budget, the best one whose p95 latency fits it."""
    first, second = QUALITY[task][:2]
    name, second_name = MD_HEADERS[first], MD_HEADERS[second]
    by_quality = sorted(rows, key=quality_order(task))
    best = by_quality[0]
    lines = [f"Best {name}: {best['candidate']} ({name} {best[first]:.4f}, {second_name} {best[second]:.4f}, p95 latency {best['latency_p95_ms']:.1f} ms)."]
    within = None
    if budget_ms is not None:
        fitting = [r for r in by_quality if r.get("latency_p95_ms") is not None and r["latency_p95_ms"] <= budget_ms]
        if fitting:
            within = fitting[0]
            lines.append(
                f"Best within a {budget_ms:g} ms p95 latency budget: {within['candidate']} "
                f"({name} {within[first]:.4f}, p95 latency {within['latency_p95_ms']:.1f} ms)."
            )
        else:
            fastest = min(rows, key=lambda r: r.get("latency_p95_ms") or float("inf"))
            lines.append(
                f"No candidate fits a {budget_ms:g} ms p95 latency budget; the fastest is {fastest['candidate']} "
                f"({fastest['latency_p95_ms']:.1f} ms p95, {name} {fastest[first]:.4f})."
            )
    return {"best": best["candidate"], "within_budget": within["candidate"] if within else None, "latency_budget_ms": budget_ms, "text": " ".join(lines)}


def build_rows(
    runs: dict[str, Run], latency_texts: int, throughput_texts: int, progress: Callable[[str], None] | None = None, backend: str = "torch"
) -> list[dict[str, Any]]:
    first = next(iter(runs.values()))
    single = measurement_texts(first, latency_texts)
    bulk = measurement_texts(first, throughput_texts, seed=1)
    rows = []
    for name, run in runs.items():
        if progress:
            progress(name)
        rows.append(candidate_row(name, run, measure_inference(run, single, bulk, backend=backend)))
    rows.sort(key=quality_order(first.task))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    for cost, column in (("train_time_s", "pareto_train_time"), ("latency_p50_ms", "pareto_latency")):
        for row, flag in zip(rows, pareto_optimal(rows, cost, QUALITY[first.task][0])):
            row[column] = flag
    return [{column: row.get(column) for column in columns(first.task)} for row in rows]


# -- writing ------------------------------------------------------------------------------------------

MD_HEADERS = {
    "rank": "#",
    "candidate": "candidate",
    "method": "method",
    "model": "model",
    "accuracy": "accuracy",
    "f1_macro": "macro-F1",
    "f1_micro": "micro-F1",
    "f1_samples": "sample-F1",
    "subset_accuracy": "subset accuracy",
    "precision_micro": "micro-P",
    "recall_micro": "micro-R",
    "word_accuracy": "word accuracy",
    "test_loss": "test loss",
    "eval_loss": "eval loss",
    "train_time_s": "train s",
    "train_samples_per_s": "train samples/s",
    "peak_memory_mb": "peak MB",
    "parameters": "params",
    "trainable_parameters": "trainable",
    "size_mb": "disk MB",
    "backend": "backend",
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
    if column in QUALITY_COLUMNS or column == "eval_loss":
        return f"{value:.4f}"
    if column in ("parameters", "trainable_parameters"):
        return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value:,}"
    if column in ("latency_p50_ms", "latency_p95_ms"):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def shown_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of a leaderboard's rows (its task's: `columns`), without the run's path."""
    return [c for c in rows[0] if c != "run"]


def markdown(rows: list[dict[str, Any]], recommendation: str, header: str) -> str:
    shown = shown_columns(rows)
    lines = [
        header,
        "",
        "| " + " | ".join(MD_HEADERS[c] for c in shown) + " |",
        "|" + "|".join("---" if c in ("candidate", "method", "model") else "---:" for c in shown) + "|",
    ]
    lines += ["| " + " | ".join(format_value(c, row[c]) for c in shown) + " |" for row in rows]
    lines += ["", recommendation, ""]
    return "\n".join(lines)


def csv_text(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(rows[0])).to_csv(index=False)
