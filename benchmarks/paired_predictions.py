"""Two `tunelab strategies` predictions files on the same test questions, compared question by question.

Each file is a strategy's `predictions/<strategy>.jsonl` (one line per test question, in the run's order, with
its verdict). For each file: right, hallucinated and abstained, with bootstrap 95% CIs, and how many of the
retrieval misses (questions whose shown passages hold no answer) it abstained on. Then the paired difference,
second minus first, in right, hallucinated and right - hallucinated: a bootstrap over questions of the
per-question differences, so the CI is that of the difference, not of either rate. `--first N` keeps the
first N questions: with the same seed, the first 200 of a 495-question run are test block 0 of 200.
Only reads finished runs; chooses nothing.

    python benchmarks/paired_predictions.py RUN_A/predictions/extractive+rag.jsonl RUN_B/predictions/extractive+rag.jsonl [--first 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tunelab.answers import bootstrap_ci


def read_predictions(path: Path, first: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:first] if first else rows


def rate(values: np.ndarray) -> dict:
    return {"mean": round(float(values.mean()), 4), "ci95": [round(x, 4) for x in bootstrap_ci(values)]}


def summary(rows: list[dict]) -> dict:
    right = np.array([r["contains"] for r in rows], dtype=float)
    wrong = np.array([r["hallucinated"] for r in rows], dtype=float)
    abstained = np.array([r["abstained"] for r in rows], dtype=float)
    misses = [r for r in rows if not r["answer_in_context"]]
    return {
        "questions": len(rows),
        "right": rate(right),
        "hallucinated": rate(wrong),
        "abstained": round(float(abstained.mean()), 4),
        "retrieval_misses": {"questions": len(misses), "abstained": sum(int(r["abstained"]) for r in misses)},
    }


def paired(first: list[dict], second: list[dict]) -> dict:
    if [r["question"] for r in first] != [r["question"] for r in second]:
        raise SystemExit(
            "error: the two files do not hold the same questions in the same order — compare runs with the same seed, test_questions and test_block"
        )

    def per_question(rows: list[dict], key: str) -> np.ndarray:
        return np.array([r[key] for r in rows], dtype=float)

    right = per_question(second, "contains") - per_question(first, "contains")
    wrong = per_question(second, "hallucinated") - per_question(first, "hallucinated")
    return {"right": rate(right), "hallucinated": rate(wrong), "right_minus_hallucinated": rate(right - wrong)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--first", dest="first_n", type=int, help="keep the first N questions (block 0 of N, same seed)")
    args = parser.parse_args()
    a, b = read_predictions(args.first, args.first_n), read_predictions(args.second, args.first_n)
    document = {
        "files": [str(args.first), str(args.second)],
        "first_questions": args.first_n,
        "first_file": summary(a),
        "second_file": summary(b),
        "second_minus_first": paired(a, b),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
