"""scikit-learn baselines: what a user gets without fine-tuning anything.

- `tfidf-logreg`: TF-IDF word n-grams + logistic regression.
- `embeddings-logreg`: frozen sentence embeddings (sentence-transformers, e.g. minilm) + logistic regression.

Each writes a normal run directory (config.yaml with `kind: sklearn`, labels.json, splits/,
data_profile.json, history.jsonl, metrics.json with the same keys as a fine-tuned run,
predictions.parquet, plots/, report.html), so compare and eval treat every candidate alike.
A scikit-learn model is no Hugging Face folder: it is saved as model.joblib (and, for the
embeddings baseline, the frozen encoder as encoder/ so the run needs nothing outside itself).

The recipe, top to bottom: load data -> split (the same function and seed as `tunelab train`,
so the test split is identical) -> features -> logistic regression with C chosen on the eval
split -> save -> evaluate on the test split -> publish.

The fit itself (features, C chosen on the eval split, the scorer) is tunelab.models.linear's, shared
with the baseline that every evaluation report shows next to the fine-tuned model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from pydantic import Field  # noqa: E402

from tunelab import atomic  # noqa: E402
from tunelab.config import DataSettings, to_yaml  # noqa: E402

# The fit and the scorer live in models/linear.py: the evaluation report's baseline fits through them too.
from tunelab.models.linear import (  # noqa: E402
    C_GRID,
    MAX_FEATURES,
    MAX_ITER,
    NGRAM_MAX,
    BaselineClassifier,
    embed,
    fit_logreg,
    load_encoder,
)
from tunelab.run import Run, named_after, out_dir, refuse_existing, start_staging  # noqa: E402

METHODS = ("tfidf-logreg", "embeddings-logreg")


class BaselineConfig(DataSettings):
    """A scikit-learn baseline run. The data settings mean the same as TrainConfig's."""

    kind: Literal["sklearn"] = Field("sklearn", description="what Run and eval see: a scikit-learn model.joblib, no model/ folder")
    method: Literal["tfidf-logreg", "embeddings-logreg"] = "tfidf-logreg"
    model: str = Field("minilm", description="sentence-transformers encoder for embeddings-logreg (catalogue name or folder)")

    C: float | None = Field(None, gt=0, description=f"inverse regularisation strength; default: the best of {C_GRID} on the eval split")
    max_iter: int = Field(MAX_ITER, gt=0)
    max_features: int = Field(MAX_FEATURES, gt=0, description="tfidf-logreg: vocabulary size")
    ngram_max: int = Field(NGRAM_MAX, ge=1, le=3, description="tfidf-logreg: longest word n-gram")
    max_length: int | None = Field(None, gt=0, description="embeddings-logreg: token limit (default: the encoder's)")
    embed_batch_size: int = Field(64, gt=0)
    threads: int | None = Field(None, gt=0)

    out: str | None = None
    overwrite: bool = False


# -- training ----------------------------------------------------------------------------------------


def train_baseline(config: BaselineConfig, progress: bool = True) -> Run:
    """Fit the baseline on config.data and return the finished run directory."""
    import joblib
    import transformers

    from tunelab import hardware
    from tunelab.data import load_splits, profile_splits

    transformers.utils.logging.disable_progress_bar()  # the encoder's load/save bars are noise here
    # Named after the method: a baseline's encoder (config.model) is unused by tfidf-logreg.
    out = out_dir(config.out, named_after(config.method, config.data))
    refuse_existing(out, config.overwrite)
    hardware.set_threads(config.threads)  # the one thread-count rule: --threads, else $TUNELAB_THREADS, else every allowed core

    # 1. Data: exactly the splits `tunelab train` makes from the same settings.
    splits, dropped = load_splits(config)
    labels = sorted(splits["train"]["label"].unique())
    label_id = {label: i for i, label in enumerate(labels)}
    y = {name: split["label"].map(label_id).to_numpy() for name, split in splits.items()}
    texts = {name: split["text"].astype(str).tolist() for name, split in splits.items()}
    _say(
        progress,
        f"[bold]plan[/]: {config.method} on {config.data} — {len(texts['train'])} train / "
        f"{len(texts['eval'])} eval / {len(texts['test'])} test rows, {len(labels)} classes",
    )

    # 2. Features and model, fitted on train only; C chosen on the eval split, never on test.
    started = time.perf_counter()
    encoder = None
    if config.method == "embeddings-logreg":
        from tunelab.models.catalogue import resolve_model

        encoder = load_encoder(resolve_model(config.model), config.max_length)
        features = {name: embed(encoder, texts[name], config.embed_batch_size) for name in ("train", "eval")}
    else:
        features = {name: texts[name] for name in ("train", "eval")}
    pipeline, chosen_c, scores, searched = fit_logreg(config, features, y, len(labels))
    train_seconds = time.perf_counter() - started

    # 3. Stage the run directory: everything a fine-tuned run has, model.joblib instead of model/.
    staging = atomic.partial_path(out)
    max_length = encoder.max_seq_length if encoder else None
    resolved = dict(out=str(out), C=chosen_c, max_length=max_length)
    profile = profile_splits(splits, encoder.tokenizer if encoder is not None else None, max_length, dropped)
    run = start_staging(staging, to_yaml(config, **resolved), splits, labels, profile)
    joblib.dump(pipeline, staging / "model.joblib")
    if encoder is not None:
        encoder.save(str(staging / "encoder"), create_model_card=False)
    write_history(staging / "history.jsonl", scores, [(c, s) for _, c, s in searched])
    atomic.write_json(
        staging / "metrics.json",
        {
            "train": training_facts(pipeline, encoder, len(texts["train"]), train_seconds, scores),
            "environment": hardware.environment("fp32"),
        },
    )

    # 4. Evaluate on the held-out test split with the same code as every fine-tuned run, then publish.
    from tunelab.evaluation import evaluate_run

    classifier = BaselineClassifier(pipeline, labels, encoder, config.embed_batch_size)
    evaluate_run(run, classifier=classifier, progress=progress)
    atomic.publish_dir(staging, out, overwrite=config.overwrite)
    return Run.open(out)


def write_history(path: Path, best: dict[str, float], searched: list[tuple[float, dict[str, float]]]) -> None:
    """The same record types a Trainer run logs, so the report's curves and over-fitting check work."""
    lines = [
        {"type": "train", "step": 1, "epoch": 1.0, "loss": best["loss"], "train_accuracy": best["train_accuracy"]},
        {
            "type": "eval",
            "step": 1,
            "epoch": 1.0,
            "eval_loss": best["eval_loss"],
            "eval_accuracy": best["eval_accuracy"],
            "train_accuracy": best["train_accuracy"],
        },
        {"type": "summary", "step": 1, "epoch": 1.0, "c_search": [{"C": c, **s} for c, s in searched]},
    ]
    import json

    atomic.write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def training_facts(pipeline, encoder, train_rows: int, seconds: float, scores: dict[str, float]) -> dict[str, Any]:
    from tunelab import hardware

    logreg = pipeline[-1]
    trainable = int(logreg.coef_.size + logreg.intercept_.size)
    frozen = sum(p.numel() for p in encoder.parameters()) if encoder is not None else 0
    return {
        # Same keys as a fine-tuned run's metrics.json["train"]; the time includes featurising (embedding) the data.
        "train_runtime_s": seconds,
        "train_samples_per_second": train_rows / seconds if seconds > 0 else None,
        "train_loss": scores["loss"],
        "train_samples": train_rows,
        "epochs": 1.0,
        "steps": int(np.max(logreg.n_iter_)),
        "processes": 1,
        "best_checkpoint": None,
        "best_eval_accuracy": scores["eval_accuracy"],
        "peak_memory_mb": hardware.peak_memory_mb(),
        "parameters": frozen + trainable,
        "trainable_parameters": trainable,
    }


def _say(progress: bool, message: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(message, highlight=False)
