"""Mean and spread over seeds of a benchmark's per-seed figures (imported by the scripts beside it, run as `python benchmarks/X.py`)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def mean_std(per_seed: list[dict], side: str, names: Iterable[str]) -> dict[str, dict[str, float]]:
    """{name: {mean, std}} of per_seed[i][side][name] over the seeds that have it (std 0 for one seed)."""
    out = {}
    for name in names:
        values = [seed[side][name] for seed in per_seed if seed[side].get(name) is not None]
        if values:
            out[name] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def over_seeds(seeds: Iterable[int], prefix: str, one_seed: Callable[[int, Path], dict]) -> list[dict]:
    """one_seed(seed, folder) for each seed, its runs in one temporary folder; each seed's two sides printed to stderr as it ends."""
    per_seed = []
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        for seed in seeds:
            per_seed.append(one_seed(seed, Path(folder)))
            print(f"seed {seed}: " + json.dumps({k: per_seed[-1][k] for k in ("finetune", "baseline")}), file=sys.stderr, flush=True)
    return per_seed


def training_facts(train: dict) -> dict:
    """The fine-tune's training figures every task benchmark reports, from metrics.json's "train"."""
    return {
        "train_seconds": train["train_runtime_s"],
        "train_samples_per_second": train["train_samples_per_second"],
        "epochs": train["epochs"],
        "best_checkpoint": train["best_checkpoint"],
    }


def candidate_lines(out: Path, names: Iterable[str], run_candidate: Callable[[str], dict]) -> list[dict]:
    """A dev script's candidates: each not yet in `out` (JSON lines, one per candidate) run and appended as it ends; then every line.

    Candidates already there are skipped, so they may run in separate processes."""
    done = {json.loads(line)["candidate"] for line in out.read_text().splitlines()} if out.exists() else set()
    for name in names:
        if name not in done:
            result = run_candidate(name)
            with out.open("a") as lines:
                lines.write(json.dumps(result) + "\n")
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
