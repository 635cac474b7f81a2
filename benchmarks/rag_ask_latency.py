"""`rag ask` latency per question, one question at a time as a user asks: the old recipe against the new.

One process run, same index, same questions (a seeded sample of the Factbook QA *test* split, used
here only to time; nothing is chosen on it), pinned by the caller to one core:
  before  SmolLM2 reading the top 4 whole chunks, free decoding (`rag ask` until this change);
  after   the extractive reader on the 5 lines closest to the question among the top 6 chunks.
Target: the new p50 no worse than the old one (issue: 1.4 s on one core).

    TUNELAB_THREADS=1 taskset -c 0 python benchmarks/rag_ask_latency.py --index IDX --reader RUN [--questions 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab import hardware as speed  # noqa: E402
from tunelab.answers import score  # noqa: E402
from tunelab.data.factbook_qa import build_factbook_qa, split_qa  # noqa: E402
from tunelab.rag.answer import answer  # noqa: E402
from tunelab.rag.index import open_index  # noqa: E402
from tunelab.rag.reader_data import ContextSettings  # noqa: E402
from tunelab.rag.readers import LMReader, SpanReader  # noqa: E402


def timed(question_rows, index, reader, settings, min_similarity) -> dict:
    answer(question_rows[0]["question"], index, reader, settings=settings, min_similarity=min_similarity)  # warm up
    seconds, right = [], 0
    for row in question_rows:
        started = time.perf_counter()
        result = answer(row["question"], index, reader, settings=settings, min_similarity=min_similarity)
        seconds.append(time.perf_counter() - started)
        right += score(result.text, row["answer"], row.get("aliases") or [], row["question"])["contains"]
    ordered = sorted(seconds)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "mean_s": round(statistics.fmean(ordered), 3),
        "right": round(right / len(question_rows), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--reader", required=True, help="an extractive reader run (rag train-reader / the built-in one)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    speed.set_threads(None)
    _, test = split_qa(build_factbook_qa(), 0.2, 0)
    rows = [r.to_dict() for r in test]
    random.Random(args.seed).shuffle(rows)
    rows = rows[: args.questions]
    from tunelab.lm.generate import Generator
    from tunelab.rag.train_reader import read_reader_settings

    with open_index(args.index) as index:
        before = timed(
            rows, index, LMReader(Generator(args.model), decoding="free", max_new_tokens=96, batch_size=1), ContextSettings(k=4, context="chunks"), 0.4
        )
        settings, abstention = read_reader_settings(args.reader)
        after = timed(rows, index, SpanReader(args.reader, threshold=abstention.min_confidence), settings, abstention.min_similarity)
    print(
        json.dumps(
            {
                "benchmark": "rag_ask_latency",
                "questions": len(rows),
                "threads": speed.torch.get_num_threads(),
                "environment": speed.environment(speed.resolve_precision("auto")),
                "before_lm_chunks_free": before,
                "after_extractive_focused": after,
                "p50_ratio_after_over_before": round(after["p50_s"] / before["p50_s"], 3),
                "target_p50_no_worse": after["p50_s"] <= before["p50_s"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
