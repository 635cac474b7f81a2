"""Fine-tuning: the tutorial recipe against tunelab's defaults, on the same three splits, over several seeds, in one process run.

(a) the tutorial: tokenizer(padding="max_length", truncation=True), default TrainingArguments apart
    from batch size and epochs, float32; it trains for the fixed epochs and chooses nothing;
(b) tunelab.train with its defaults (dynamic padding, length-grouped batches, max length from the
    training rows, bf16 autocast where the CPU has it, all cores, the best epoch's checkpoint kept).

The splits are drawn once, before either recipe runs, and both recipes get the same three:
    train   both recipes train on it
    eval    choosing only: tunelab's best checkpoint (load_best_model_at_end, by accuracy); the
            tutorial uses it for nothing
    test    scoring only: every accuracy and F1 below
stratified and seeded (--sample-seed), with duplicate texts dropped and, for the built-in data sets,
every row the recipe defaults were tuned on (TUNING_SAMPLES: benchmarks/ablate_recipe.py's sample)
left out, so the headline is measured on rows the tuning never saw.

Each recipe is trained with --seeds training seeds (--first-seed, +1, ...). Prints one JSON document:
per-seed results, and per recipe the mean, standard deviation and 95% intervals (t over seeds, and
a bootstrap over test rows) of test accuracy and macro-F1, the mean paired difference, speed
(samples/s, tokens/s, GFLOPS as a fraction of a matmul peak measured here), the CPU flags, the
sample (seed, sizes, row ids) and which split chose what ("chosen_on"). The headline is the mean.

    python benchmarks/finetune_vs_tutorial.py --data tweets                                   # headline, 3 seeds
    python benchmarks/finetune_vs_tutorial.py --data bbc-news --train-samples 500 --eval-samples 150 --test-samples 300
    python benchmarks/finetune_vs_tutorial.py --quick                                         # smoke check, tiny
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

# The samples the recipe defaults (lr auto, warmup 0, length_window 4, length grouping) were tuned or
# checked on: benchmarks/ablate_recipe.py's default sample (tweets) and its bbc-news run, which were also
# the samples of this script's earlier runs (benchmarks/results/README.md). As (train rows, eval rows,
# sample seed) of `train_and_eval_sample`; the headline sample leaves out every text in them.
TUNING_SAMPLES: dict[str, list[tuple[int, int, int]]] = {
    "tweets": [(600, 1000, 42)],
    "bbc-news": [(800, 400, 42)],
}

QUICK = dict(train_samples=24, eval_samples=12, test_samples=24, epochs=1.0, seeds=2)


def matmul_peak_gflops(dtype, n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9


def _training_clock():
    from transformers import TrainerCallback

    class TrainingClock(TrainerCallback):
        """Seconds spent inside training epochs only (evaluation and checkpointing excluded)."""

        def __init__(self):
            self.seconds, self._start = 0.0, None

        def on_epoch_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.seconds += time.perf_counter() - self._start

    return TrainingClock()


# --- samples and splits (pure: tests/test_benchmark_splits.py) --------------------------------------
def _pick(frame: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n stratified rows and the rest, both keeping the frame's index."""
    if n >= len(frame):
        return frame, frame.iloc[:0]
    if n <= 0:
        return frame.iloc[:0], frame
    picked, rest = train_test_split(frame, train_size=n, random_state=seed, stratify=frame["label"])
    return picked, rest


def sample(frame, n, seed):
    return _pick(frame, n, seed)[0].reset_index(drop=True)


def train_and_eval_sample(frame, train_samples: int, eval_samples: int, seed: int, keep_index: bool = False):
    """Training rows from 80% of the data, evaluation rows from the held-out 20%, both stratified.

    benchmarks/ablate_recipe.py draws its sample with this (the tuning sample of TUNING_SAMPLES);
    keep_index=True keeps the data's row ids instead of numbering the rows afresh.
    """
    pool, held_out = train_test_split(frame, test_size=0.2, random_state=seed, stratify=frame["label"])
    train, evaluation = _pick(pool, train_samples, seed)[0], _pick(held_out, eval_samples, seed)[0]
    if keep_index:
        return train, evaluation
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def tuning_texts(frame: pd.DataFrame, samples: list[tuple[int, int, int]]) -> set[str]:
    """Every text of the tuning samples (train and eval rows), as ablate_recipe.py drew them."""
    texts: set[str] = set()
    for train_samples, eval_samples, seed in samples:
        train, evaluation = train_and_eval_sample(frame, train_samples, eval_samples, seed, keep_index=True)
        texts |= set(train["text"]) | set(evaluation["text"])
    return texts


def draw_splits(frame: pd.DataFrame, sizes: dict[str, int], seed: int, exclude_texts: set[str] = frozenset()) -> tuple[dict[str, pd.DataFrame], dict]:
    """Disjoint, stratified train / eval / test rows (test drawn first, then eval, then train), keeping
    the data's row ids; rows whose text is in exclude_texts are left out, and so is every repeat of a
    text, so that no text is in two splits. Returns the splits and what was left out."""
    excluded = frame["text"].isin(exclude_texts)
    pool = frame[~excluded]
    repeats = pool["text"].duplicated()
    pool = pool[~repeats]
    needed = sum(sizes.values())
    if needed > len(pool):
        raise SystemExit(
            f"the sample needs {needed} rows ({', '.join(f'{k} {v}' for k, v in sizes.items())}) but only {len(pool)} are left "
            f"once {int(excluded.sum())} tuning rows and {int(repeats.sum())} repeated texts are out: ask for fewer"
        )
    splits = {}
    rest = pool
    for name in ("test", "eval", "train"):
        splits[name], rest = _pick(rest, sizes[name], seed)
    info = {"rows_in_data": len(frame), "tuning_rows_left_out": int(excluded.sum()), "repeated_texts_left_out": int(repeats.sum()), "pool_rows": len(pool)}
    return {name: splits[name] for name in ("train", "eval", "test")}, info


# --- statistics (pure) ---------------------------------------------------------------------------
def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (scikit-learn's f1_score(average="macro",
    zero_division=0), which tunelab reports)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    hits = np.bincount(y_true[y_true == y_pred], minlength=classes)
    counted = np.bincount(y_true, minlength=classes) + np.bincount(y_pred, minlength=classes)
    present = counted > 0
    return float((2 * hits[present] / counted[present]).mean()) if present.any() else 0.0


def t_critical(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def summary(values: list[float], digits: int = 4) -> dict:
    """Per-seed values, their mean, sample standard deviation and 95% t interval over seeds."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    out = {
        "per_seed": [round(v, digits) for v in values],
        "mean": round(mean, digits),
        "std": None,
        "ci95_seeds": None,
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }
    if n > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = t_critical(n) * std / math.sqrt(n)
        out.update(std=round(std, digits), ci95_seeds=[round(mean - half, digits), round(mean + half, digits)])
    return out


def bootstrap_cis(
    statistics: dict[str, Callable[[np.ndarray], float]], rows: int, resamples: int = 2000, seed: int = 0, digits: int = 4
) -> dict[str, list[float]]:
    """95% percentile intervals of each statistic(row indices) over the same bootstrap resamples of the rows."""
    rng = np.random.default_rng(seed)
    draws = {name: np.empty(resamples) for name in statistics}
    for i in range(resamples):
        index = rng.integers(0, rows, rows)
        for name, statistic in statistics.items():
            draws[name][i] = statistic(index)
    return {name: [round(float(np.percentile(d, 2.5)), digits), round(float(np.percentile(d, 97.5)), digits)] for name, d in draws.items()}


def compact_json(document: dict) -> str:
    """JSON with indent 2, but lists of numbers on one line (the row ids, per-seed values)."""
    text = json.dumps(document, indent=2)
    return re.sub(r"\[\s+([-0-9.eE,\s]+?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


# --- the two recipes -------------------------------------------------------------------------------
def training_seconds(run) -> float:
    """The Trainer's runtime without its per-epoch evaluations, to compare training alone."""
    history = run.history()
    summary_row = next(h for h in history if h["type"] == "summary")
    return summary_row["train_runtime"] - sum(h.get("eval_runtime", 0.0) for h in history if h["type"] == "eval")


def test_scores(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> dict:
    return {"test_accuracy": float((y_true == y_pred).mean()), "test_f1_macro": macro_f1(y_true, y_pred, classes)}


def tutorial_recipe(model_dir, splits, labels, epochs, batch_size, workdir, seed):
    """Trains on splits["train"] for the fixed epochs and is scored on splits["test"]; eval is unused."""
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    label2id = {label: i for i, label in enumerate(labels)}

    def encode(frame):
        encoded = tokenizer(frame["text"].tolist(), padding="max_length", truncation=True)
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label2id[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], frame["label"])
        ]

    train_set, test_set = encode(splits["train"]), encode(splits["test"])
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    args = TrainingArguments(
        output_dir=str(workdir / "tutorial"),
        seed=seed,
        per_device_train_batch_size=batch_size,
        num_train_epochs=epochs,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    clock = _training_clock()
    trainer = Trainer(model=model, args=args, train_dataset=train_set, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints logs to stdout, where this script's JSON goes
    trainer.train()
    prediction = trainer.predict(test_set)
    predicted = np.asarray(prediction.predictions).argmax(-1)
    real_tokens = sum(int(sum(example["attention_mask"])) for example in train_set) * epochs
    result = {
        "train_seconds": clock.seconds,
        "samples_per_second": len(train_set) * epochs / clock.seconds,
        "tokens_per_second": real_tokens / clock.seconds,
        "padded_length": len(train_set[0]["input_ids"]),
        "gflops": trainer.state.total_flos / clock.seconds / 1e9,
        "precision": "fp32",
        **test_scores(np.asarray(prediction.label_ids), predicted, len(labels)),
        "test_loss": prediction.metrics["test_loss"],
        "chosen": "nothing: the model after the last step",
    }
    return result, predicted


def tunelab_recipe(model, files, train, labels, epochs, batch_size, workdir, seed):
    """tunelab.train with eval_data (chooses the checkpoint) and test_data (scores it) given apart."""
    from transformers import AutoTokenizer

    import tunelab

    run = tunelab.train(
        model=model,
        data=str(files["train"]),
        eval_data=str(files["eval"]),
        test_data=str(files["test"]),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        out=str(workdir / f"tunelab-{seed}"),
    )
    summary_row = next(h for h in run.history() if h["type"] == "summary")
    seconds = training_seconds(run)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    max_length = run.config["max_length"]
    lengths = [min(len(ids), max_length) for ids in tokenizer(train["text"].tolist())["input_ids"]]
    predictions = pd.read_parquet(run.path / "predictions.parquet")
    label2id = {label: i for i, label in enumerate(labels)}
    y_true = predictions["label"].map(label2id).to_numpy()
    predicted = predictions["predicted"].map(label2id).to_numpy()
    facts = run.metrics.get("train", {})
    result = {
        "train_seconds": seconds,
        "samples_per_second": len(train) * epochs / seconds,
        "tokens_per_second": sum(lengths) * epochs / seconds,
        "max_length": max_length,
        "gflops": summary_row["total_flos"] / seconds / 1e9,
        "precision": run.config["precision"],
        "lr": run.config["lr"],
        **test_scores(y_true, predicted, len(labels)),
        "test_loss": run.metrics["loss"],
        "tunelab_reported_test_accuracy": run.metrics["accuracy"],
        "chosen": f"{facts.get('best_checkpoint')} (eval accuracy {facts.get('best_eval_accuracy')})",
    }
    return result, predicted, predictions["text"].tolist()


# --- the run -----------------------------------------------------------------------------------
def chosen_on(data: str) -> dict:
    tuned = TUNING_SAMPLES.get(data)
    return {
        "tunelab_checkpoint": "eval (load_best_model_at_end by eval accuracy, once per epoch)",
        "tunelab_early_stopping": "off (tunelab's default)",
        "tunelab_lr": "lr auto: a rule of the model's width, no search on these rows; the rule was chosen on the tuning sample, left out here",
        "tunelab_max_length": "train (95th percentile of the training rows' token lengths)",
        "tutorial": "nothing (fixed epochs, the last step's model; eval split unused)",
        "recipe_defaults": (
            f"tuned with benchmarks/ablate_recipe.py on {data} rows (train, eval, sample seed) = {tuned}, none of which are in this sample"
            if tuned
            else f"tuned on tweets/bbc-news samples; no tuning rows known for {data}"
        ),
        "scores": "test (every accuracy and F1 in this document)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="tweets")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--eval-samples", type=int, default=400, help="rows used only to choose (tunelab's best checkpoint)")
    parser.add_argument("--test-samples", type=int, default=1000, help="rows used only to score both recipes")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sample-seed", type=int, default=7, help="seed of the sample (the tuning sample used 42)")
    parser.add_argument("--seeds", type=int, default=3, help="train each recipe with this many training seeds")
    parser.add_argument("--first-seed", type=int, default=100, help="the first training seed (then +1, +2, ...; the tuning used 42-44)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test rows")
    parser.add_argument("--keep-tuning-rows", action="store_true", help="do not leave out the rows the recipe defaults were tuned on")
    parser.add_argument("--quick", action="store_true", help=f"smoke check: {QUICK}")
    options = parser.parse_args()
    if options.quick:
        for key, value in QUICK.items():
            setattr(options, key, value)
    if options.seeds < 1:
        raise SystemExit("--seeds must be at least 1 (3 or more for a spread)")

    import torch

    from tunelab import hardware as speed
    from tunelab.data import load_source
    from tunelab.models.catalogue import resolve_model

    speed.set_threads(None)  # all cores of the affinity mask, or $TUNELAB_THREADS; tunelab.train does the same
    frame = load_source(options.data)
    tuned = [] if options.keep_tuning_rows else TUNING_SAMPLES.get(options.data, [])
    sizes = {"train": options.train_samples, "eval": options.eval_samples, "test": options.test_samples}
    splits, left_out = draw_splits(frame, sizes, options.sample_seed, tuning_texts(frame, tuned))
    labels = sorted(splits["train"]["label"].unique())
    label2id = {label: i for i, label in enumerate(labels)}
    y_test = splits["test"]["label"].map(label2id).to_numpy()
    peaks = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    seeds = list(range(options.first_seed, options.first_seed + options.seeds))

    runs, predicted = [], {"tutorial": [], "tunelab": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        files = {}
        for name, split in splits.items():
            files[name] = workdir / f"{name}.parquet"
            split[["text", "label"]].reset_index(drop=True).to_parquet(files[name])
        frames = {name: split[["text", "label"]].reset_index(drop=True) for name, split in splits.items()}
        for seed in seeds:
            speed.set_threads(None)
            tutorial, tutorial_predicted = tutorial_recipe(resolve_model(options.model), frames, labels, options.epochs, options.batch_size, workdir, seed)
            ours, ours_predicted, ours_texts = tunelab_recipe(options.model, files, frames["train"], labels, options.epochs, options.batch_size, workdir, seed)
            if ours_texts != frames["test"]["text"].astype(str).tolist():
                raise SystemExit("tunelab's predictions.parquet is not in the order of the test split given")
            for result in (tutorial, ours):
                result["fraction_of_matmul_peak"] = result["gflops"] / peaks[result["precision"]]
            predicted["tutorial"].append(tutorial_predicted)
            predicted["tunelab"].append(ours_predicted)
            runs.append({"seed": seed, "tutorial": tutorial, "tunelab": ours})
            print(
                f"seed {seed}: test accuracy tutorial {tutorial['test_accuracy']:.4f} at {tutorial['samples_per_second']:.2f} samples/s, "
                f"tunelab {ours['test_accuracy']:.4f} at {ours['samples_per_second']:.2f} samples/s",
                file=sys.stderr,
            )

    # Bootstrap over test rows: the same resampled rows for every seed and both recipes (paired).
    correct = {recipe: np.array([p == y_test for p in predicted[recipe]], dtype=float) for recipe in predicted}
    pred = {recipe: np.array(predicted[recipe]) for recipe in predicted}

    def accuracy_of(recipe):
        return lambda i: float(correct[recipe][:, i].mean())

    def f1_of(recipe):
        return lambda i: float(np.mean([macro_f1(y_test[i], p[i], len(labels)) for p in pred[recipe]]))

    statistics = {f"{recipe}:{metric}": make(recipe) for recipe in predicted for metric, make in (("accuracy", accuracy_of), ("f1", f1_of))}
    statistics["difference:accuracy"] = lambda i: 100 * (statistics["tunelab:accuracy"](i) - statistics["tutorial:accuracy"](i))
    statistics["difference:f1"] = lambda i: 100 * (statistics["tunelab:f1"](i) - statistics["tutorial:f1"](i))
    boot = bootstrap_cis(statistics, len(y_test), options.bootstrap) if options.bootstrap else {}

    def recipe_summary(recipe: str) -> dict:
        rows = [run[recipe] for run in runs]
        out = {}
        for metric, key in (("test_accuracy", "accuracy"), ("test_f1_macro", "f1")):
            out[metric] = {**summary([r[metric] for r in rows]), "ci95_bootstrap_test_rows": boot.get(f"{recipe}:{key}")}
        for metric in ("samples_per_second", "tokens_per_second", "train_seconds", "gflops", "fraction_of_matmul_peak"):
            out[metric] = summary([r[metric] for r in rows], digits=3)
        out["precision"] = rows[0]["precision"]
        return out

    summaries = {recipe: recipe_summary(recipe) for recipe in ("tutorial", "tunelab")}
    difference = {
        "test_accuracy_points": {
            **summary([100 * (r["tunelab"]["test_accuracy"] - r["tutorial"]["test_accuracy"]) for r in runs], 2),
            "ci95_bootstrap_test_rows": boot.get("difference:accuracy"),
        },
        "test_f1_macro_points": {
            **summary([100 * (r["tunelab"]["test_f1_macro"] - r["tutorial"]["test_f1_macro"]) for r in runs], 2),
            "ci95_bootstrap_test_rows": boot.get("difference:f1"),
        },
    }
    speedup = summary([r["tunelab"]["samples_per_second"] / r["tutorial"]["samples_per_second"] for r in runs], 2)
    report = {
        "benchmark": "finetune_vs_tutorial",
        "data": options.data,
        "model": options.model,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "training_seeds": seeds,
        "headline": {
            "what": f"means over {len(seeds)} training seeds, on the test split",
            "test_accuracy_mean": {recipe: summaries[recipe]["test_accuracy"]["mean"] for recipe in summaries},
            "test_f1_macro_mean": {recipe: summaries[recipe]["test_f1_macro"]["mean"] for recipe in summaries},
            "accuracy_difference_points_mean": difference["test_accuracy_points"]["mean"],
            "speedup_samples_per_second_mean": speedup["mean"],
        },
        "sample": {
            "seed": options.sample_seed,
            "procedure": "draw_splits: from the data, leave out every text of the tuning samples and every repeat of a text; then, "
            "stratified by label with the sample seed, test rows first, eval rows from the rest, train rows from the rest",
            "tuning_samples_left_out": [{"train": a, "eval": b, "sample_seed": s} for a, b, s in tuned],
            **left_out,
            "rows": {name: len(split) for name, split in splits.items()},
            "labels": {name: split["label"].value_counts().sort_index().to_dict() for name, split in splits.items()},
            "row_ids": "sample_rows below: positions in tunelab.data.load_source(data)",
        },
        "chosen_on": chosen_on(options.data),
        "environment": speed.environment(speed.resolve_precision("auto")),
        "matmul_peak_gflops": peaks,
        **summaries,
        "paired_difference_tunelab_minus_tutorial": difference,
        "speedup_samples_per_second": speedup,
        "bootstrap": {
            "resamples": options.bootstrap,
            "what": "test rows resampled with replacement, the same rows for every seed and both recipes; statistic: the mean over seeds",
        },
        "runs": runs,
        "sample_rows": {name: [int(i) for i in split.index] for name, split in splits.items()},
    }
    print(compact_json(report))


if __name__ == "__main__":
    main()
