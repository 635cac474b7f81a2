"""Which part of tunelab's training recipe moves accuracy? tunelab.train once per variant and seed, on
the tuning sample; prints one JSON line per run.

The tuning sample is finetune_vs_tutorial.train_and_eval_sample(--train-samples, --eval-samples,
--sample-seed): its rows are listed in finetune_vs_tutorial.TUNING_SAMPLES, which the headline
benchmark leaves out. Its held-out rows are halved, stratified:
    eval   choosing only: each run's best checkpoint
    dev    scoring only: the variant's dev_accuracy, which the recipe defaults are chosen by
so no run is scored on the rows its checkpoint was chosen on, and the headline test rows are never seen.

Variants switch single settings back to the tutorial's (fp32, no length grouping, max length 512, lr 5e-5,
no warmup, no weight decay) or all of them at once ("tutorial-like"); a variant may also be written
as settings, e.g. `length_window=2,warmup=0`:

    TUNELAB_THREADS=1 taskset -c 0 python benchmarks/ablate_recipe.py --data tweets --seeds 42 43 \\
        --variants default tutorial-like tutorial-like+group tutorial-like+warmup
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import yaml
from sklearn.model_selection import train_test_split

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from finetune_vs_tutorial import train_and_eval_sample, training_seconds  # noqa: E402  (this script's folder is on sys.path)

import tunelab  # noqa: E402
from tunelab.data import load_source  # noqa: E402

TUTORIAL_LIKE = dict(precision="fp32", group_by_length=False, max_length=512, warmup=0.0, weight_decay=0.0, lr=5e-5)
VARIANTS = {
    "default": {},
    "tutorial-like": TUTORIAL_LIKE,
    "tutorial-like+bf16": {**TUTORIAL_LIKE, "precision": "bf16"},
    "tutorial-like+group": {**TUTORIAL_LIKE, "group_by_length": True},
    "tutorial-like+max-length": {k: v for k, v in TUTORIAL_LIKE.items() if k != "max_length"},
    "tutorial-like+warmup": {**TUTORIAL_LIKE, "warmup": 0.1, "weight_decay": 0.01},
    "no-group": {"group_by_length": False},
    "hf-group": {"length_window": 50},  # Hugging Face's window (capped at a quarter of the data)
    "no-warmup": {"warmup": 0.0},
    "no-group-no-warmup-no-decay": {"group_by_length": False, "warmup": 0.0, "weight_decay": 0.0},
}


def variant_settings(name: str) -> dict:
    if name in VARIANTS:
        return VARIANTS[name]
    pairs = [item.split("=", 1) for item in name.split(",")]
    if not all(len(pair) == 2 for pair in pairs):
        raise SystemExit(f"variant '{name}' is neither one of {sorted(VARIANTS)} nor key=value[,key=value]")
    return {key: yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="tweets")
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--eval-samples", type=int, default=1000, help="held-out rows: half choose checkpoints (eval), half score (dev)")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--sample-seed", type=int, default=42, help="seed of the tuning sample (a TUNING_SAMPLES entry of finetune_vs_tutorial.py)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="training seeds, one run each")
    parser.add_argument("--variants", nargs="+", default=["default", "tutorial-like"], help=f"{sorted(VARIANTS)} or key=value[,key=value]")
    args = parser.parse_args()

    frame = load_source(args.data)
    train, held_out = train_and_eval_sample(frame, args.train_samples, args.eval_samples, args.sample_seed)
    evaluation, dev = train_test_split(held_out, test_size=0.5, random_state=args.sample_seed, stratify=held_out["label"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train.to_parquet(tmp / "train.parquet")
        evaluation.to_parquet(tmp / "eval.parquet")
        dev.to_parquet(tmp / "dev.parquet")
        for variant in args.variants:
            for seed in args.seeds:
                run = tunelab.train(
                    model="minilm",
                    data=str(tmp / "train.parquet"),
                    eval_data=str(tmp / "eval.parquet"),
                    test_data=str(tmp / "dev.parquet"),
                    epochs=args.epochs,
                    batch_size=16,
                    seed=seed,
                    out=str(tmp / f"{variant}-{seed}".replace("=", "-").replace(",", "_")),
                    **variant_settings(variant),
                )
                print(
                    json.dumps(
                        {
                            "variant": variant,
                            "seed": seed,
                            "dev_accuracy": run.metrics["accuracy"],
                            "eval_rows": len(evaluation),
                            "dev_rows": len(dev),
                            "samples_per_second": round(len(train) * args.epochs / training_seconds(run), 2),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
