"""evaluate_run: score a run's model on its test split (or other labelled data) and write the artefacts.

Reads top to bottom like the steps: check the data, load the model, predict (timed), compute the
metrics, look for over-fitting, fit and score the TF-IDF baseline on the same rows, probe for bias,
plot, then write predictions, report and metrics.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunelab.atomic import write_json
from tunelab.errors import TunelabError, did_you_mean
from tunelab.evaluation.generalisation import generalisation_check
from tunelab.evaluation.metrics import classification_metrics
from tunelab.run import Run
from tunelab.textpairs import PAIR_COLUMN, ModelInput, frame_inputs, is_pair

MAX_MISTAKES = 25
LATENCY_SAMPLES = 16  # single-text calls timed for the latency figure: enough for a median, cheap
HEADLINE = ("loss", "accuracy", "f1_macro")  # test figures metrics.json also holds at its top level
# metrics.json keys of the run (training's, and a multi-label run's thresholds) an evaluation written elsewhere carries along
CARRIED = ("task", "train", "environment", "thresholds")


def evaluate_run(
    run: Run | str | os.PathLike,
    data: pd.DataFrame | str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    bias: bool | str | os.PathLike | dict[str, list[tuple[str, str]]] = False,
    data_name: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    classifier: Any = None,
    baseline: bool | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    """Evaluate `run`'s model and write metrics.json, predictions.parquet, plots/ and report.html.

    data: a DataFrame with `text` and `label` (label names) columns, or a source for
    tunelab.data.load_source (file or built-in name, with columns `text` and `label`); a pair
    classifier's data also has `text_pair`;
    default: the run's test split.
    out_dir: where to write; default: the run directory. metrics.json there is merged into, not replaced.
    bias: True for the built-in pair lists, a path to add the user's lists from a file, or a mapping.
    classifier: an already loaded scorer (`.labels`, `.logits(texts, batch_size, progress)`,
    `.predict_proba`) instead of the run's model/ folder, e.g. a scikit-learn baseline's.
    backend: the runtime of the run's model, one of tunelab.backends.CHOICES for every task (tunelab.runtime.choice:
    exported on first use, parity-gated); the timing in metrics.json names it.
    baseline: fit TF-IDF + logistic regression on the run's train split and score it on the same rows
    (metrics.json["baseline"], the report's headline); default: the run's `baseline` setting, else True.
    Returns the merged content of metrics.json.
    """
    run = run if isinstance(run, Run) else Run.open(run)
    if run.task == "multi-label":
        return _evaluate_multilabel(run, data, out_dir, bias, data_name, batch_size, progress, classifier, baseline, backend)
    if run.task == "token-classification":
        return _evaluate_tokens(run, data, out_dir, bias, data_name, batch_size, progress, classifier, baseline, backend)
    labels = run.labels
    if data is None:
        frame, source = run.split("test"), "test split"
    elif isinstance(data, (str, os.PathLike)):
        from tunelab.data import load_source

        frame, source = load_source(data, text_pair_col=PAIR_COLUMN if run.is_pair_classifier else None), data_name or str(data)
    else:
        frame, source = data, data_name or "the given data"
    y_true = label_ids(frame, labels, source, run.is_pair_classifier)
    pair_lists = bias_lists(bias)  # a bad pairs file should fail before minutes of inference
    if pair_lists and run.is_pair_classifier:
        raise TunelabError("the bias probe (--bias) does not apply to pair-classification runs yet", "drop --bias")

    from tunelab.models.classifier import softmax

    if classifier is None:
        from tunelab.runtime import load_scorer

        classifier = load_scorer(run, backend)
    if len(classifier.labels) != len(labels):
        raise TunelabError(
            f"run '{run.path}' is inconsistent: labels.json has {len(labels)} labels, the model {len(classifier.labels)}",
            "train the run again",
        )
    texts = frame_inputs(frame)
    logits, timing = timed_logits(classifier, texts, batch_size, progress)
    proba = softmax(logits.astype(np.float64))

    test = classification_metrics(y_true, proba, labels)
    test["timing"] = {**timing, "backend": getattr(classifier, "backend", None)}
    history = run.history()
    generalisation = generalisation_check(history)
    baseline_figures = None
    if wants_baseline(run, baseline):
        from tunelab.evaluation.baseline import comparison, fit_and_score

        baseline_figures, baseline_correct = fit_and_score(run, texts, y_true, labels)
        if baseline_correct is not None:
            model_correct = proba.argmax(axis=1) == y_true
            baseline_figures["comparison"] = comparison(baseline_figures, test, model_correct, baseline_correct, run.config, generalisation)
    probe = None
    if pair_lists:
        from tunelab.evaluation.bias import bias_probe

        probe = bias_probe(texts, proba, lambda t: classifier.predict_proba(t, batch_size), labels, pair_lists)

    from tunelab.evaluation.plots import classification_plots
    from tunelab.evaluation.report import write_report

    predictions = predictions_frame(texts, y_true, proba, labels)
    return write_artefacts(
        output_folder(run, out_dir),
        run,
        test=test,
        source=source,
        generalisation=generalisation,
        predictions=predictions,
        history=history,
        draw_plots=lambda folder: classification_plots(folder, y_true, proba, labels, test),
        headline=HEADLINE,
        write=write_report,
        mistakes=confident_mistakes(predictions),
        baseline=baseline_figures,
        bias=probe,
    )


def _evaluate_multilabel(run: Run, data, out_dir, bias, data_name, batch_size, progress, classifier, baseline, backend) -> dict[str, Any]:
    """A multi-label run's evaluation (evaluation/multilabel_pipeline.py); a file is read with the run's label column and separator."""
    from tunelab.evaluation.multilabel_pipeline import evaluate_multilabel_run

    if bias:
        raise TunelabError("the bias probe (--bias) does not apply to multi-label runs yet", "drop --bias")
    if classifier is not None:
        raise TunelabError("evaluating a multi-label run with another scorer is not supported", "evaluate the run's own model")
    if isinstance(data, (str, os.PathLike)):
        from tunelab.data.multilabel import load_multilabel_source

        config = run.config
        data_name = data_name or str(data)
        data = load_multilabel_source(data, config.get("text_col", "text"), config.get("label_col", "labels"), config.get("label_sep"))
    return evaluate_multilabel_run(run, data, out_dir, data_name=data_name, batch_size=batch_size, progress=progress, baseline=baseline, backend=backend)


def _evaluate_tokens(run: Run, data, out_dir, bias, data_name, batch_size, progress, classifier, baseline, backend) -> dict[str, Any]:
    """A token-classification run's evaluation (evaluation/token_pipeline.py); a file is read with the run's columns and IOB rule."""
    from tunelab.evaluation.token_pipeline import evaluate_token_run

    if bias or classifier is not None:
        raise TunelabError("--bias and another scorer do not apply to token-classification runs", "evaluate the run's own model")
    if isinstance(data, (str, os.PathLike)):
        from tunelab.data.token_tags import load_tagged

        config = run.config
        data_name = data_name or str(data)
        columns = (config.get("tokens_col", "tokens"), config.get("label_col", "tags"), config.get("text_col", "text"), config.get("spans_col", "spans"))
        data = load_tagged(data, *columns, encoding=config.get("encoding", "utf-8"), strict_iob=bool(config.get("strict_iob")))
    return evaluate_token_run(run, data, out_dir, data_name=data_name, batch_size=batch_size, progress=progress, baseline=baseline, backend=backend)


def label_ids(frame: pd.DataFrame, labels: list[str], source: str, pairs: bool = False) -> np.ndarray:
    """Map label names to the model's ids; a label the model never saw is a user error naming it.
    pairs: the model classifies text pairs, so the frame needs a `text_pair` column too."""
    needed = ("text", PAIR_COLUMN, "label") if pairs else ("text", "label")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise TunelabError(
            f"{source} has no {' or '.join(repr(c) for c in missing)} column; columns are: {', '.join(map(str, frame.columns))}",
            "choose them with --text-col, --text-pair-col and --label-col" if pairs else "choose them with --text-col and --label-col",
        )
    if len(frame) == 0:
        raise TunelabError(f"{source} has no rows to evaluate")
    names = frame["label"].astype(str)
    index = {name: i for i, name in enumerate(labels)}
    unknown = names[~names.isin(index)]
    if len(unknown):
        counts = unknown.value_counts()
        first = str(counts.index[0])
        shown = ", ".join(f"'{name}' ({n} rows)" for name, n in counts.head(5).items())
        hint = did_you_mean(first, labels)
        raise TunelabError(
            f"{source} has label{'s' if len(counts) > 1 else ''} the model was not trained on: {shown}; it knows: {', '.join(labels)}",
            hint or "evaluate on data with the same label names, or drop those rows",
        )
    return names.map(index).to_numpy(dtype=int)


def timed_logits(classifier, texts: list[str], batch_size: int, progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Batched logits with a progress bar, plus throughput and single-text latency."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # stderr, so `tunelab eval --json` keeps stdout clean for scripts.
    bar = Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not progress,
    )
    with bar:
        task = bar.add_task("evaluating", total=len(texts))
        start = time.perf_counter()
        logits = classifier.logits(texts, batch_size=batch_size, progress=lambda n: bar.advance(task, n))
        seconds = time.perf_counter() - start
    # Throughput hides the wait for one request; time a few single texts for the latency a user sees.
    step = max(1, len(texts) // LATENCY_SAMPLES)
    latencies = []
    for text in texts[::step][:LATENCY_SAMPLES]:
        start = time.perf_counter()
        classifier.logits([text], batch_size=1)
        latencies.append((time.perf_counter() - start) * 1000)
    timing = {
        "examples": len(texts),
        "batch_size": batch_size,
        "seconds": seconds,
        "examples_per_second": len(texts) / seconds if seconds > 0 else None,
        "ms_per_example": seconds * 1000 / len(texts),
        "latency_ms_p50": statistics.median(latencies) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "latency_samples": len(latencies),
    }
    return logits, timing


def predictions_frame(texts: list[ModelInput], y_true: np.ndarray, proba: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """One row per scored input: its text (and text_pair), true and predicted label, confidence, every probability."""
    predicted = proba.argmax(axis=1)
    pairs = bool(texts) and is_pair(texts[0])
    columns = {"text": [t[0] for t in texts], PAIR_COLUMN: [t[1] for t in texts]} if pairs else {"text": texts}
    frame = pd.DataFrame(
        {
            **columns,
            "label": [labels[i] for i in y_true],
            "predicted": [labels[i] for i in predicted],
            "confidence": proba.max(axis=1),
            "correct": predicted == y_true,
        }
    )
    for i, label in enumerate(labels):
        frame[f"prob_{label}"] = proba[:, i]
    return frame


def confident_mistakes(predictions: pd.DataFrame, limit: int = MAX_MISTAKES) -> list[dict[str, Any]]:
    wrong = predictions[~predictions["correct"]].nlargest(limit, "confidence")
    if PAIR_COLUMN in wrong:  # the report shows a pair as its two texts, one under the other
        wrong = wrong.assign(text=wrong["text"] + "\n⟂ " + wrong[PAIR_COLUMN])
    return wrong[["text", "label", "predicted", "confidence"]].to_dict("records")


def wants_baseline(run: Run, baseline: bool | None) -> bool:
    """baseline as asked, else the run's own `baseline` setting (TrainConfig.baseline), else yes."""
    return bool(run.config.get("baseline", True)) if baseline is None else baseline


def output_folder(run: Run, out_dir: str | os.PathLike | None) -> Path:
    return Path(out_dir).expanduser() if out_dir is not None else run.path


def write_artefacts(
    out: Path,
    run: Run,
    *,
    test: dict[str, Any],
    source: str,
    generalisation: dict[str, Any],
    predictions: pd.DataFrame,
    history: list[dict[str, Any]],
    draw_plots: Callable[[Path], dict[str, Path]],
    headline: Sequence[str],
    write: Callable[..., Path],
    mistakes: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    bias: dict[str, Any] | None = None,
    **report_extra: Any,
) -> dict[str, Any]:
    """An evaluation's files in `out`, for every task: predictions.parquet; plots/, the training curves of
    `history` and then draw_plots' own; report.html, rendered by `write` (evaluation/report.write_report or a
    task's page on it, which takes report_extra); metrics.json, merged into what is there, written last.
    Returns metrics.json's content."""
    from tunelab.evaluation.plots import training_curves

    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / "predictions.parquet", predictions)
    plots = {**training_curves(out / "plots", history), **draw_plots(out / "plots")}
    metrics = merged_metrics(out, run, test, source, generalisation, bias, baseline, headline)
    write(
        out / "report.html",
        run_name=run_name(run),
        config=run.config,
        test=test,
        evaluated_on=metrics["evaluated_on"],
        plots=plots,
        mistakes=mistakes,
        generalisation=generalisation,
        data_profile=run.data_profile,
        train_info=metrics.get("train"),
        environment=metrics.get("environment"),
        bias=bias,
        baseline=baseline,
        **report_extra,
    )
    # metrics.json last: its test key appearing means every other artefact is already written.
    write_json(out / "metrics.json", metrics)
    return metrics


def merged_metrics(
    out: Path,
    run: Run,
    test: dict,
    source: str,
    generalisation: dict,
    probe: dict | None,
    baseline: dict | None = None,
    headline: Sequence[str] = HEADLINE,
) -> dict[str, Any]:
    """metrics.json's content: what is already there (training's keys), with this evaluation merged in;
    the `headline` figures of the test split are repeated at the top level."""
    path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    # An evaluation written elsewhere still describes the run's model: carry its training facts along.
    if out.resolve() != run.path.resolve():
        for key in CARRIED:
            if key in run.metrics and key not in metrics:
                metrics[key] = run.metrics[key]
    metrics["test"] = test
    metrics.update({key: test[key] for key in headline})
    metrics["evaluated_on"] = {"source": source, "rows": test["n"], "run": str(published_path(run))}
    metrics["generalisation"] = generalisation
    if probe is not None:
        metrics["bias"] = probe
    else:
        metrics.pop("bias", None)  # a probe from an earlier evaluation no longer describes these numbers
    if baseline is not None:
        metrics["baseline"] = baseline
    else:
        metrics.pop("baseline", None)  # turned off: an earlier comparison would describe other rows
    return metrics


def bias_lists(bias: bool | str | os.PathLike | dict | None) -> dict[str, list[tuple[str, str]]]:
    from tunelab.evaluation.bias import BUILTIN_PAIRS, load_pairs

    if bias is None or bias is False:
        return {}
    if bias is True:
        return dict(BUILTIN_PAIRS)
    if isinstance(bias, dict):
        return dict(bias)
    # A user file adds to the built-in lists: the common gender swaps are always worth checking.
    return {**BUILTIN_PAIRS, **load_pairs(bias)}


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def published_path(run: Run) -> Path:
    """The run's final folder: train() evaluates while the run still sits in its staging ".name.partial"."""
    name = run.path.name
    if name.startswith(".") and name.endswith(".partial"):
        return run.path.with_name(name[1 : -len(".partial")])
    return run.path


def run_name(run: Run) -> str:
    return str(run.config.get("name") or published_path(run).name)
