"""benchmarks/miss_abstention_dev.py's rules 9 and 10 are one predicate read on two populations: replayed on the
recorded results files, it gives each file's recorded verdicts (files written before the mend hold a count, not a
share, in kind_questions.real_misses.abstained)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RECORDED = sorted((BENCHMARKS / "results").glob("miss_abstention_dev-line-miss-*seed*.json"))


@pytest.fixture(scope="module")
def dev():
    """benchmarks/miss_abstention_dev.py as a module."""
    sys.path.insert(0, str(BENCHMARKS))  # the script imports from beside itself
    try:
        spec = importlib.util.spec_from_file_location("_bench_miss_abstention_dev", BENCHMARKS / "miss_abstention_dev.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def verdict(decision: dict, rule: str) -> str:
    (value,) = [value for key, value in decision.items() if f"({rule}'s reading)" in key or key.startswith(rule)]
    return value


def with_kind_shares(result: dict) -> dict:
    kind = result.get("kind_questions")
    if kind and isinstance(kind["real_misses"]["abstained"], int) and kind["real_misses"]["questions"]:
        kind["real_misses"]["abstained"] = kind["real_misses"]["abstained"] / kind["real_misses"]["questions"]
    return result


def test_recorded_files_are_there():
    assert len(RECORDED) >= 5


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: path.stem)
def test_the_one_predicate_gives_each_recorded_verdict(dev, path):
    document = json.loads(path.read_text())
    results, decision = document["results"]["other-question"], document["decision"]
    base = with_kind_shares(results["today"])
    (level,) = [with_kind_shares(result) for name, result in results.items() if name != "today"]
    # The per-question differences are not written; their mean is, in points.
    (overall,) = [value["points"] / 100 for key, value in decision.items() if key.startswith("right - hallucinated, line-miss level")]
    rule_9 = dev.line_miss_level_passes(base, level, np.array([overall]))
    assert ("passes" if rule_9 else "fails") == verdict(decision, "rule 9")
    if "kind_questions" in base:
        kinds = decision["kind questions: right - hallucinated, line-miss level minus today"]["points"] / 100
        rule_10 = dev.line_miss_level_passes(base["kind_questions"], level["kind_questions"], np.array([kinds]))
        assert ("passes" if rule_10 else "fails") == verdict(decision, "rule 10")


def test_real_misses_abstained_counts_from_the_share(dev):
    assert dev.real_misses_abstained({"real_misses": {"questions": 24, "abstained": 0.7083}}) == 17
    assert dev.real_misses_abstained({"real_misses": {"questions": 0, "abstained": None}}) == 0
