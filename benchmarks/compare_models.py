"""What fine-tuning buys: minilm fine-tuned three ways (full, head only, LoRA) against two
scikit-learn baselines (frozen minilm embeddings + logistic regression, TF-IDF + logistic
regression), all on identical splits and one test set, in one process run. Prints JSON.

    python benchmarks/compare_models.py --data bbc-news            # benchmarks/compare/bbc-news.yaml
    python benchmarks/compare_models.py --data tweets --out /tmp/c  # benchmarks/compare/tweets.yaml

The compare files hold the exact settings (sizes chosen for a 2-core CPU); an interrupted run,
started again with the same --out, skips the candidates that finished.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunelab.compare import compare

HERE = Path(__file__).parent / "compare"
KEYS = (
    "candidate",
    "method",
    "accuracy",
    "f1_macro",
    "test_loss",
    "train_time_s",
    "peak_memory_mb",
    "parameters",
    "trainable_parameters",
    "size_mb",
    "latency_p50_ms",
    "latency_p95_ms",
    "examples_per_s",
    "pareto_train_time",
    "pareto_latency",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=[p.stem for p in sorted(HERE.glob("*.yaml"))], default="bbc-news")
    parser.add_argument("--out", help="compare folder (default: the file's out:)")
    parser.add_argument("--latency-budget-ms", type=float, default=10.0)
    args = parser.parse_args()
    summary = compare(HERE / f"{args.data}.yaml", out=args.out, latency_budget_ms=args.latency_budget_ms)
    print(
        json.dumps(
            {
                "data": args.data,
                "test_set": summary["test_set"],
                "leaderboard": [{k: row[k] for k in KEYS} for row in summary["rows"]],
                "recommendation": summary["recommendation"]["text"],
                "out": summary["out"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
