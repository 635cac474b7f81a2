"""Token classification (NER): tunelab's fine-tune against the gazetteer baseline, on the same splits, over seeds.

For each seed, `tunelab train --task token-classification` runs on the data (default: the built-in
factbook-entities set, see tunelab/data/factbook_entities.py for how it is derived). The seed draws
the split by country, so the test countries' sentences are unseen in training; both the fine-tuned
model and the gazetteer every token-classification evaluation builds (tunelab/evaluation/token_baseline.py)
use it the same way:
    train   the model trains on it; the gazetteer is its entity strings
    eval    choosing only: the model's best epoch (entity micro-F1)
    test    scoring only: every F1 below
The settings (epochs, learning rate, batch) were fixed before the first run; the number of training
sentences and the class weights were chosen on the eval split by token_classification_dev.py; none is
tuned on test. Prints one
JSON document: per-seed figures, the mean and standard deviation over seeds, whether the fine-tune
beats the gazetteer on mean entity micro-F1 (the headline) and macro-F1, training time and samples/s,
threads and CPU flags.

    TUNELAB_THREADS=1 python benchmarks/token_classification.py            # the recorded run: minilm, 3 seeds
    TUNELAB_THREADS=1 python benchmarks/token_classification.py --quick    # smoke check: 1 epoch, 1 seed, 200 sentences
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tunelab import hardware  # noqa: E402
from tunelab.config import TokenClassificationConfig  # noqa: E402
from tunelab.data.token_tags import entity_counts  # noqa: E402
from tunelab.evaluation.token_pipeline import evaluate_token_run  # noqa: E402
from tunelab.training.token_classification import train_token_classifier  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from seed_stats import mean_std, over_seeds, training_facts  # noqa: E402 - benchmarks/seed_stats.py, beside this script

FIGURES = ("f1_micro", "f1_macro", "precision_micro", "recall_micro")


def one_seed(args: argparse.Namespace, seed: int, workdir: Path, scored_on: str = "test") -> dict:
    """Train on the seed's split and score the fine-tune and the gazetteer on `scored_on` (test; eval for dev scripts choosing a recipe)."""
    config = TokenClassificationConfig(
        model=args.model,
        data=args.data,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        class_weights=args.class_weights,
        threads=args.threads,
        seed=seed,
        out=str(workdir / f"seed-{seed}"),
        overwrite=True,
    )
    started = time.perf_counter()
    run = train_token_classifier(config, progress=False)
    wall = time.perf_counter() - started
    # The run scores its test split as it finishes; a dev script scores the eval split into a folder of its own and reads only that.
    metrics = (
        run.metrics
        if scored_on == "test"
        else evaluate_token_run(run, run.split(scored_on), workdir / f"seed-{seed}-{scored_on}", progress=False, baseline=True)
    )
    scores, train, baseline = metrics["test"], run.metrics["train"], metrics["baseline"]
    return {
        "scored_on": scored_on,
        "seed": seed,
        "sentences": {name: len(run.split(name)) for name in ("train", "eval", "test")},
        "train_entities": entity_counts(run.split("train")),
        "test_countries": sorted(run.split("test")["group"].unique().tolist()),
        "finetune": {
            **{name: scores[name] for name in FIGURES},
            "per_type": scores["per_type"],
            # Where each type's first words went: a type never predicted shows up here as O or another type.
            "first_words_tagged_as": first_words_tagged_as(scores["confusion_matrix"]),
            **training_facts(train),
        },
        "baseline": {
            **{name: baseline[name] for name in FIGURES},
            "per_type": baseline["per_type"],
            "entries": baseline["description"],
        },
        "wall_seconds": wall,
    }


def first_words_tagged_as(confusion: dict) -> dict[str, dict[str, int]]:
    """For each B- tag, the tags the model gave the words that carry it (from the tag confusion matrix), zero counts left out."""
    tags = confusion["tags"]
    return {tag: {tags[j]: n for j, n in enumerate(row) if n} for tag, row in zip(tags, confusion["counts"]) if tag.startswith("B-")}


def settings_parser(description: str) -> argparse.ArgumentParser:
    """The recipe's settings as flags, with the recorded run's defaults (the dev script's candidates override them)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default="factbook-entities")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    # 2,000 of the ~2,550 training sentences, chosen on the eval split by token_classification_dev.py (at 1,000 the ~40
    # CAPITAL entities were too few to learn), keep three seeds under 15 minutes on one thread.
    parser.add_argument("--max-train-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TUNELAB_THREADS", "1")))
    parser.add_argument("--class-weights", choices=("none", "balanced", "sqrt-balanced"), default="none")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = settings_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 seed, 200 training sentences: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.max_train_samples = 1.0, args.seeds[:1], 200
    per_seed = over_seeds(args.seeds, "tunelab-ner-", lambda seed, folder: one_seed(args, seed, folder))
    reported = (*FIGURES, "train_seconds", "train_samples_per_second")
    finetune, baseline = mean_std(per_seed, "finetune", reported), mean_std(per_seed, "baseline", reported)
    # The headline is entity micro-F1; macro-F1 weighs the rare types (CAPITAL) as much as the common ones.
    beats = {name: finetune[name]["mean"] > baseline[name]["mean"] for name in ("f1_micro", "f1_macro")}
    document = {
        "benchmark": "token_classification",
        "settings": dict(vars(args)),
        "recipe": "tunelab train --task token-classification (a tag per word on its first word piece, best epoch by eval entity micro-F1, "
        f"{args.max_train_samples} training sentences, class weights {args.class_weights})",
        "baseline": "gazetteer: the train split's entity strings, longest match first (no learning)",
        "chosen_on": {
            "best epoch": "eval split",
            "epochs, lr, batch size": "fixed before the first run",
            "training sentences, class weights": "the eval split, by benchmarks/token_classification_dev.py (results/token_classification_dev.json)",
            "every figure": "test split",
        },
        "per_seed": per_seed,
        "finetune": finetune,
        "gazetteer": baseline,
        "finetune_beats_baseline": beats["f1_micro"],
        "finetune_beats_baseline_on": beats,
        "verdict": "; ".join(
            f"the fine-tune {'beats' if won else 'does not beat'} the gazetteer on mean test entity {name.replace('f1_', '')}-F1" for name, won in beats.items()
        ),
        "threads": args.threads,
        "environment": hardware.environment(hardware.resolve_precision("auto")),
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
