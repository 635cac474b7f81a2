"""benchmarks/small_data.py --combine: runs of the same draws that differ in their candidates (or seeds) join
into the document one run of everything would have written; runs of other draws are refused."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULT = json.loads((BENCHMARKS / "results" / "small_data.json").read_text(encoding="utf-8"))


def load_small_data():
    sys.path.insert(0, str(BENCHMARKS))  # small_data imports its neighbour finetune_vs_tutorial by name
    try:
        spec = importlib.util.spec_from_file_location("_bench_small_data", BENCHMARKS / "small_data.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


small_data = load_small_data()


def only(document: dict, candidates: list[str]) -> dict:
    """The file a run of just these candidates (on the same draws and seeds) would have written."""
    part = copy.deepcopy(document)
    part["candidates"] = {name: document["candidates"][name] for name in candidates}
    for entry in part["datasets"].values():
        entry["runs"] = {name: entry["runs"][name] for name in candidates}
    return part


def write(folder: Path, name: str, document: dict) -> str:
    path = folder / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def combined(tmp_path: Path, *documents: dict) -> dict:
    paths = [write(tmp_path, f"part-{i}.json", document) for i, document in enumerate(documents)]
    small_data.combine(paths, tmp_path / "combined.json")
    return json.loads((tmp_path / "combined.json").read_text(encoding="utf-8"))


def test_runs_split_by_candidate_join_into_the_same_figures(tmp_path):
    names = list(RESULT["candidates"])
    assert len(names) >= 2
    joined = combined(tmp_path, only(RESULT, names[:1]), only(RESULT, names[1:]))
    for key in ("candidates", "dev_accuracy_mean", "chosen", "chosen_beats_today_on_dev", "seeds", "summary", "environment", "cpu_flags"):
        assert joined[key] == RESULT[key], key
    for name, entry in RESULT["datasets"].items():
        assert joined["datasets"][name] == entry, name
    assert [part["candidates"] for part in joined["combined_from"]] == [names[:1], names[1:]]


def test_runs_split_by_dataset_and_candidate_join_into_the_same_figures(tmp_path):
    names, datasets = list(RESULT["candidates"]), list(RESULT["datasets"])
    earlier = only(RESULT, names[:-1])
    later = [only(RESULT, names[-1:]) for _ in range(2)]
    for part, keep in zip(later, (datasets[:1], datasets[1:]), strict=True):
        part["datasets"] = {name: entry for name, entry in part["datasets"].items() if name in keep}
    joined = combined(tmp_path, earlier, *later)
    assert (joined["chosen"], joined["summary"], joined["datasets"]) == (RESULT["chosen"], RESULT["summary"], RESULT["datasets"])
    with pytest.raises(SystemExit, match="ran different seeds"):  # a dataset without the later candidate
        combined(tmp_path, earlier, later[1])


def test_a_run_without_todays_recipe_reports_without_it():
    names = [name for name in RESULT["candidates"] if name != "today"]
    results = {name: {**entry, "runs": {cand: entry["runs"][cand] for cand in names}} for name, entry in RESULT["datasets"].items()}
    document = small_data.report(results, RESULT["seeds"], {name: RESULT["candidates"][name] for name in names}, {})
    assert document["chosen_beats_today_on_dev"] is None and "datasets_where_new_default_beats_today" not in document["summary"]
    assert document["summary"]["datasets_where_new_default_beats_tfidf"] == RESULT["summary"]["datasets_where_new_default_beats_tfidf"]


def test_a_candidate_measured_on_another_draw_is_refused(tmp_path):
    later = only(RESULT, list(RESULT["candidates"])[1:])
    dataset = next(iter(later["datasets"].values()))
    dataset["linear"]["tfidf-logreg"]["test"]["accuracy"] += 0.004
    with pytest.raises(SystemExit, match="drawn differently"):
        combined(tmp_path, only(RESULT, list(RESULT["candidates"])[:1]), later)
    resized = only(RESULT, list(RESULT["candidates"])[1:])
    next(iter(resized["datasets"].values()))["rows"]["dev"] += 1
    with pytest.raises(SystemExit, match="drawn differently"):
        combined(tmp_path, only(RESULT, list(RESULT["candidates"])[:1]), resized)


def test_candidates_with_other_seeds_or_a_seed_twice_are_refused(tmp_path):
    names = list(RESULT["candidates"])
    fewer = only(RESULT, names[1:])
    for entry in fewer["datasets"].values():
        for runs in entry["runs"].values():
            del runs[-1]
    with pytest.raises(SystemExit, match="ran different seeds"):
        combined(tmp_path, only(RESULT, names[:1]), fewer)
    with pytest.raises(SystemExit, match="seed in more than one file"):
        combined(tmp_path, RESULT, only(RESULT, names[1:]))
    # Split by seed instead, and a candidate's settings changed in between.
    early, late = copy.deepcopy(RESULT), copy.deepcopy(RESULT)
    for document, keep in ((early, RESULT["seeds"][:-1]), (late, RESULT["seeds"][-1:])):
        document["seeds"] = keep
        for entry in document["datasets"].values():
            entry["runs"] = {name: [r for r in runs if r["seed"] in keep] for name, runs in entry["runs"].items()}
    assert combined(tmp_path, early, late)["summary"] == RESULT["summary"]
    late["candidates"][names[1]] = {"pooling": "cls"}
    with pytest.raises(SystemExit, match="different settings"):
        combined(tmp_path, early, late)
