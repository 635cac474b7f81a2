"""Pair classification: the fine-tuned MiniLM cross-encoder against the cosine of MiniLM sentence embeddings, over seeds.

For each seed, `tunelab train --task pair-classification` runs on the data (default: the built-in
factbook-relevance set, question–passage relevance derived from the Factbook QA set; see
tunelab/data/factbook_relevance.py). The run's split is drawn from the seed (rows of one question stay
in one split), and both sides use it the same way:
    train   the fine-tune trains on (at most --max-train-samples of) it; the baseline does not train
    eval    choosing only: the fine-tune's best epoch (eval accuracy); the baseline's cosine threshold
            (the one with the highest eval accuracy)
    test    scoring only: every accuracy and F1 below
The baseline embeds both texts with the same all-MiniLM-L6-v2 (`minilm`) the fine-tune starts from,
as sentence-transformers trained it (mean pooling, unit vectors), and calls a pair positive when the
cosine is at least the threshold. Prints one JSON document: per-seed figures, mean and standard
deviation over seeds, whether the fine-tune beats the baseline, training time and samples/s, and the
CPU (tunelab.hardware.environment).

    python benchmarks/pair_classification.py            # headline: minilm, 3 seeds
    python benchmarks/pair_classification.py --quick    # smoke check: 100 training rows, 1 epoch, 1 seed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from seed_stats import mean_std, over_seeds, training_facts  # noqa: E402 - benchmarks/seed_stats.py, beside this script
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from tunelab import hardware  # noqa: E402
from tunelab.config import PairClassificationConfig  # noqa: E402
from tunelab.rag.embed import SentenceEmbedder  # noqa: E402
from tunelab.training.classify import train  # noqa: E402

FIGURES = ("accuracy", "f1_positive", "f1_macro")


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 of the positive class and macro-F1 (scikit-learn's)."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_positive": float(f1_score(y_true, y_pred, pos_label=1, zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


class CachedEmbeddings:
    """Unit vectors of texts, each text embedded once over all seeds (their eval and test splits overlap)."""

    def __init__(self, embedder: SentenceEmbedder):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        new = sorted(set(texts) - self.vectors.keys())
        self.vectors.update(zip(new, self.embedder.encode(new)))
        return np.stack([self.vectors[text] for text in texts])


def cosines(embed: CachedEmbeddings, frame) -> np.ndarray:
    first = embed(frame["text"].astype(str).tolist())
    second = embed(frame["text_pair"].astype(str).tolist())
    return (first * second).sum(axis=1)  # unit vectors: the dot product is the cosine


def best_threshold(similarity: np.ndarray, y_true: np.ndarray) -> float:
    """The cosine threshold with the highest accuracy on these rows (ties: the lowest), among the midpoints of sorted similarities."""
    values = np.unique(similarity)
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    accuracy = [((similarity >= t).astype(int) == y_true).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def one_seed(args: argparse.Namespace, seed: int, workdir: Path, embed: CachedEmbeddings) -> dict:
    config = PairClassificationConfig(
        model=args.model,
        data=args.data,
        text_pair_col="text_pair",
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        eval_fraction=args.eval_fraction,
        test_fraction=args.test_fraction,
        seed=seed,
        out=str(workdir / f"seed-{seed}"),
        overwrite=True,
    )
    started = time.perf_counter()
    run = train(config, progress=False)
    wall = time.perf_counter() - started
    positive = args.positive_label
    predictions = run.path / "predictions.parquet"
    import pandas as pd

    frame = pd.read_parquet(predictions)
    y_true = (frame["label"] == positive).to_numpy(dtype=int)
    finetune = scores(y_true, (frame["predicted"] == positive).to_numpy(dtype=int))
    train_facts = run.metrics["train"]

    eval_split, test_split = run.split("eval"), run.split("test")
    started = time.perf_counter()
    eval_similarity = cosines(embed, eval_split)
    threshold = best_threshold(eval_similarity, (eval_split["label"] == positive).to_numpy(dtype=int))
    test_similarity = cosines(embed, test_split)
    baseline_seconds = time.perf_counter() - started  # less than a full embedding pass from the second seed on: texts are cached
    test_true = (test_split["label"] == positive).to_numpy(dtype=int)
    # The run's predictions are the test split's rows in order: both sides are scored on the same rows.
    assert (test_true == y_true).all() and len(test_split) == len(frame)
    baseline = scores(test_true, (test_similarity >= threshold).astype(int))
    return {
        "seed": seed,
        "rows": {name: len(run.split(name)) for name in ("train", "eval", "test")},
        "finetune": {
            **finetune,
            **training_facts(train_facts),
            "recipe": run.config.get("recipe"),
            "pooling": run.config.get("pooling"),
            "max_length": run.config.get("max_length"),
            "lr": run.config.get("lr"),
            "test_pairs_per_second": run.metrics["test"]["timing"]["examples_per_second"],
        },
        "baseline": {
            **baseline,
            "threshold": threshold,
            "eval_and_test_seconds": baseline_seconds,
        },
        "wall_seconds": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="factbook-relevance")
    parser.add_argument("--positive-label", default="relevant")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-train-samples", type=int, default=1200)
    # A small eval split: it only picks the best epoch and the threshold, and is scored once per epoch.
    parser.add_argument("--eval-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="100 training rows, 1 epoch, 1 seed: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.max_train_samples = 1.0, args.seeds[:1], 100
    begun = time.perf_counter()
    embed = CachedEmbeddings(SentenceEmbedder(args.model, bf16=False))
    per_seed = over_seeds(args.seeds, "tunelab-pairs-", lambda seed, folder: one_seed(args, seed, folder, embed))
    finetune, baseline = (
        mean_std(per_seed, "finetune", (*FIGURES, "train_seconds", "train_samples_per_second", "threshold")),
        mean_std(per_seed, "baseline", (*FIGURES, "train_seconds", "train_samples_per_second", "threshold")),
    )
    beats = all(finetune[name]["mean"] > baseline[name]["mean"] for name in ("accuracy", "f1_positive"))
    document = {
        "benchmark": "pair_classification",
        "settings": dict(vars(args)),
        "threads": hardware.thread_count(None),
        "recipe": "tunelab train --task pair-classification (the question and passage as the tokenizer's text pair, a softmax head; "
        "recipe auto, learning rate auto, best epoch by eval accuracy)",
        "baseline": "cosine of all-MiniLM-L6-v2 sentence embeddings (the model the fine-tune starts from), positive at or above a threshold",
        "chosen_on": {"fine-tune best epoch, baseline threshold": "eval split", "every figure": "test split"},
        "per_seed": per_seed,
        "finetune": finetune,
        "embedding_cosine": baseline,
        "finetune_beats_baseline": beats,
        "verdict": ("the fine-tune beats" if beats else "the fine-tune does not beat") + " the baseline on mean test accuracy and F1 of the relevant class",
        "environment": hardware.environment(hardware.resolve_precision("auto")),
    }
    document["wall_seconds"] = time.perf_counter() - begun
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
