"""Training the candidates of a compare: one fresh process each, finished ones skipped, searches.

Each candidate trains in its own spawned process: peak memory (the process's max RSS) then
belongs to that candidate alone, and one candidate's threads, caches or crash do not leak into
the next. Every candidate is an ordinary run directory published atomically, so a compare that
was interrupted finds the finished ones on disk and goes on with the rest.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import yaml

from tunelab import atomic
from tunelab.compare.config import TASK_SETTINGS, Candidate, CompareConfig, candidate_config
from tunelab.config import TrainConfig, resolve_recipe
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.training.baselines import BaselineConfig
from tunelab.training.tasks import trainer_of

# Settings whose stored value is resolved at run time (None/'auto' -> a number): not compared on resume.
RESOLVED_AT_RUN_TIME = ("out", "overwrite", "threads", "max_length", "batch_size", "precision", "C")
# Settings of what the evaluation adds, not of the model: a finished run (even one from before the setting) stays valid.
EVALUATION_ONLY = ("baseline",)


def train_candidates(config: CompareConfig, progress: bool = True, isolate: bool = True) -> tuple[dict[str, Path], dict[str, Any]]:
    """Train every candidate that is not finished yet; returns name -> run directory and the searches' records."""
    out = Path(config.out)
    runs: dict[str, Path] = {}
    searches: dict[str, Any] = {}
    for candidate in config.candidates:
        final = out / "candidates" / candidate.name
        if candidate.search is not None:
            runs[candidate.name] = run_search(config, candidate, final, progress, isolate)
            searches[candidate.name] = json.loads((final / "search.json").read_text(encoding="utf-8"))
        else:
            ensure_run(candidate_config(config, candidate, final), final, candidate.name, progress, isolate)
            runs[candidate.name] = final
    return runs, searches


def ensure_run(settings: TrainConfig | BaselineConfig, final: Path, label: str, progress: bool, isolate: bool) -> Path:
    """Train `settings` into `final` unless a finished run with the same settings is already there."""
    if final.exists():
        check_same_settings(settings, final, label)
        _say(progress, f"[dim]{label}: finished earlier, skipped ({final})[/]")
        return final
    _say(progress, f"[bold cyan]{label}[/]: training ({settings.method})")
    train_in_process(settings, progress, isolate)
    return final


def check_same_settings(settings: TrainConfig | BaselineConfig, final: Path, label: str) -> None:
    run = Run.open(final)
    if "test" not in run.metrics:
        raise TunelabError(f"{label}: '{final}' holds a run without test metrics", f"run `tunelab eval {final}`, or delete that folder")
    stored = run.config
    if isinstance(settings, TrainConfig) and settings.recipe == "auto" and stored.get("recipe") in ("default", "small-data"):
        # auto chose by the run's training rows: compare with what the recipe it chose fills in.
        settings = resolve_recipe(settings.model_copy(update={"recipe": stored["recipe"]}), train_rows=0)
    for key, wanted in settings.model_dump().items():
        if key in EVALUATION_ONLY:
            continue
        if key not in stored and wanted == type(settings).model_fields[key].default:
            continue  # a setting added since that run was trained, left at its default
        if key in RESOLVED_AT_RUN_TIME and (wanted is None or wanted == "auto" or key in ("out", "overwrite")):
            continue
        if stored.get(key) != wanted:
            raise TunelabError(
                f"{label}: the finished run in '{final}' has {key}={stored.get(key)!r}, the compare file now says {wanted!r}",
                "delete that folder to train the candidate again, or give the compare another out:",
            )


def train_in_process(settings: TrainConfig | BaselineConfig, progress: bool, isolate: bool) -> None:
    if not isolate:
        _raise(_train(type(settings).__name__, settings.model_dump(), progress))
        return
    # spawn, not fork: a forked child would inherit this process's torch threads and its memory peak.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            outcome = pool.submit(_train, type(settings).__name__, settings.model_dump(), progress).result()
        except BrokenProcessPool:
            raise TunelabError(
                f"the training process for '{settings.out}' died (out of memory?)",
                "lower batch_size or max_length for that candidate, then run the compare again",
            ) from None
    _raise(outcome)


# The settings classes a candidate's run can have, by name: the name is what crosses into the spawned child.
SETTINGS_CLASSES = {cls.__name__: cls for cls in (BaselineConfig, *TASK_SETTINGS.values())}


def _train(kind: str, values: dict[str, Any], progress: bool) -> tuple[str, str | None] | None:
    """Runs in the child. A user error comes back as (message, hint): exceptions lose their hint in pickling."""
    try:
        settings = SETTINGS_CLASSES[kind](**values)
        trainer_of(settings)(settings, progress=progress)
    except TunelabError as error:
        return error.message, error.hint
    return None


def _raise(outcome: tuple[str, str | None] | None) -> None:
    if outcome is not None:
        raise TunelabError(*outcome)


# -- search -------------------------------------------------------------------------------------------


def run_search(config: CompareConfig, candidate: Candidate, final: Path, progress: bool, isolate: bool) -> Path:
    """Train every trial, pick the best on the EVAL split (never test), publish it as the candidate."""
    spec = candidate.search
    trials = spec.trials_list(config.seed)
    if final.exists():
        record = json.loads((final / "search.json").read_text(encoding="utf-8")) if (final / "search.json").is_file() else {}
        if [t["params"] for t in record.get("trials", [])] != trials:
            raise TunelabError(
                f"{candidate.name}: the finished search in '{final}' tried other hyperparameters than the compare file now lists",
                "delete that folder to search again, or give the compare another out:",
            )
        _say(progress, f"[dim]{candidate.name}: search finished earlier, skipped ({final})[/]")
        return final

    root = final.parent.parent / "trials" / candidate.name
    results = []
    for index, params in enumerate(trials):
        path = root / f"trial-{index:02d}"
        label = f"{candidate.name} trial {index + 1}/{len(trials)} " + " ".join(f"{k}={v}" for k, v in params.items())
        ensure_run(candidate_config(config, candidate, path, **params), path, label, progress, isolate)
        run = Run.open(path)
        metric, score = best_eval(run)
        results.append(
            {
                "trial": index,
                "params": params,
                "eval_metric": metric,
                "eval_score": score,
                "eval_loss": eval_loss(run),
                "train_runtime_s": run.metrics["train"].get("train_runtime_s"),
                "run": str(path),
            }
        )
    # Chosen on the eval split: the test split stays unseen by every choice the compare makes. The figure is the
    # one that chose each trial's kept epoch (accuracy; entity micro-F1 for token runs; loss for multi-label runs,
    # whose thresholds are chosen after it).
    metric = results[0]["eval_metric"]
    sign = -1.0 if metric == "loss" else 1.0  # a lower loss is better

    def ranking(result: dict[str, Any]) -> tuple[float, float]:
        score = result["eval_score"]
        return (-math.inf if score is None else sign * score, -(result["eval_loss"] or 0.0))

    best = max(results, key=ranking)
    record = {
        "strategy": spec.strategy,
        "chosen_on": f"eval split ({metric}, then loss)" if metric != "loss" else "eval split (loss)",
        "best_trial": best["trial"],
        "best_params": best["params"],
        "trials": results,
    }

    staging = atomic.partial_path(final)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(best["run"], staging)
    stored = yaml.safe_load((staging / "config.yaml").read_text(encoding="utf-8"))
    stored["out"] = str(final)
    atomic.write_text(staging / "config.yaml", yaml.safe_dump(stored, sort_keys=False, allow_unicode=True))
    atomic.write_json(staging / "search.json", record)
    atomic.publish_dir(staging, final)
    if not spec.keep_trials:
        shutil.rmtree(root, ignore_errors=True)  # the winner lives on as the candidate; search.json keeps every trial's numbers
        if root.parent.is_dir() and not any(root.parent.iterdir()):
            root.parent.rmdir()
    _say(progress, f"[bold cyan]{candidate.name}[/]: best trial {best['trial'] + 1} {best['params']} (eval {metric} {best['eval_score']:.4f})")
    return final


def best_eval(run: Run) -> tuple[str, float | None]:
    """The eval-split figure that chose the epoch a run kept, from metrics.json's best_eval_<metric>: (metric, value)."""
    for key, value in run.metrics.get("train", {}).items():
        if key.startswith("best_eval_"):
            return key.removeprefix("best_eval_"), value
    return "accuracy", None


def eval_loss(run: Run) -> float | None:
    """Eval-split loss of the model the run kept: the evaluation at its best eval figure (best_eval)."""
    evals = [h for h in run.history() if h.get("type") == "eval" and h.get("eval_loss") is not None]
    if not evals:
        return None
    metric, best = best_eval(run)
    kept = [h for h in evals if best is not None and h.get(f"eval_{metric}") == best]
    return float((kept or evals)[-1]["eval_loss"])


def _say(progress: bool, message: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(message, highlight=False)
