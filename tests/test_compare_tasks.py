"""tunelab compare for pair classification, multi-label and token classification: candidates of one task on
identical splits, trained by the task's own trainer, ranked by the task's headline figure, each row equal to its
run's metrics.json, and the mistakes named before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import write_tiny_bert
from tests.test_multilabel import tags_frame
from tests.test_pair_classification import pairs_frame
from tests.test_token_classification import tagged_rows, write_jsonl
from tunelab.compare import compare, compare_runs, load_compare_config
from tunelab.compare.leaderboard import QUALITY
from tunelab.errors import TunelabError
from tunelab.run import Run

HEADLINE = {"pair-classification": "accuracy", "multi-label": "f1_micro", "token-classification": "f1_micro"}


def write_compare_file(folder: Path, spec: dict) -> Path:
    path = folder / "compare.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "out": str(folder / "cmp"), "latency_texts": 5, "throughput_texts": 12, **spec}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pair_compare(tmp_path_factory, tiny_bert):
    """Through the CLI: each candidate trains in its own spawned process, as a user's compare does."""
    folder = tmp_path_factory.mktemp("pair-compare")
    pairs_frame(rows=160).to_csv(folder / "nli.csv", index=False)
    spec = {
        "task": "pair-classification",
        "data": str(folder / "nli.csv"),
        "text_col": "premise",
        "text_pair_col": "hypothesis",
        "defaults": {"model": str(tiny_bert), "epochs": 4, "batch_size": 16},
        "candidates": [{"name": "fast", "method": "full", "lr": 2e-3}, {"name": "slow", "method": "full", "lr": 1e-5}],
    }
    from tunelab.cli import app

    result = CliRunner().invoke(app, ["compare", str(write_compare_file(folder, spec))])
    assert result.exit_code == 0, result.output
    return folder, result.output


@pytest.fixture(scope="module")
def multilabel_compare(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("ml-compare")
    tags_frame(rows=200).to_json(folder / "tags.jsonl", orient="records", lines=True)
    spec = {
        "task": "multi-label",
        "data": str(folder / "tags.jsonl"),
        "label_col": "tags",
        "defaults": {"model": str(tiny_bert), "epochs": 5, "lr": 1e-3},
        "candidates": [{"name": "full", "method": "full"}, {"name": "head", "method": "head", "lr": 3e-3}],
    }
    return folder, compare(write_compare_file(folder, spec), progress=False, isolate=False)


@pytest.fixture(scope="module")
def token_compare(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ner-compare")
    model = write_tiny_bert(folder / "piece-bert", pieces=True)
    data = write_jsonl(folder / "ner.jsonl", tagged_rows(rows=160))
    spec = {
        "task": "token-classification",
        "data": str(data),
        "defaults": {"model": str(model), "epochs": 6},
        "candidates": [{"name": "fast", "lr": 3e-3}, {"name": "slow", "lr": 1e-5}],
    }
    return folder, compare(write_compare_file(folder, spec), progress=False, isolate=False)


def check_leaderboard(folder: Path, task: str) -> pd.DataFrame:
    """The rows hold the task's own figures, equal to each run's metrics.json, ranked by its headline; one test split for all."""
    board = pd.read_csv(folder / "cmp" / "leaderboard.csv")
    summary = json.loads((folder / "cmp" / "leaderboard.json").read_text(encoding="utf-8"))
    assert summary["task"] == task and summary["ranked_by"] == HEADLINE[task]
    others = {c for figures in QUALITY.values() for c in figures} - set(QUALITY[task])
    assert list(board.columns[4 : 4 + len(QUALITY[task])]) == list(QUALITY[task]) and not others & set(board.columns)
    headline = board[HEADLINE[task]].tolist()
    assert headline == sorted(headline, reverse=True) and list(board["rank"]) == list(range(1, len(board) + 1))
    splits = []
    for row in board.to_dict("records"):
        run = Run.open(folder / "cmp" / "candidates" / row["candidate"])
        assert run.task == task
        for column in QUALITY[task]:
            assert row[column] == pytest.approx(run.metrics["loss" if column == "test_loss" else column]), column
        assert row["train_time_s"] == pytest.approx(run.metrics["train"]["train_runtime_s"])
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"] and row["examples_per_s"] > 0
        splits.append(run.split("test").drop(columns=["group"], errors="ignore").to_json())
    assert len(set(splits)) == 1  # identical test rows for every candidate
    html = (folder / "cmp" / "compare.html").read_text(encoding="utf-8")
    assert f"Ranked by test {'accuracy' if task == 'pair-classification' else ''}" in html and "<img" in html
    return board


def test_pair_candidates_are_ranked_by_accuracy_on_pairs(pair_compare):
    folder, output = pair_compare
    board = check_leaderboard(folder, "pair-classification")
    assert Run.open(folder / "cmp" / "candidates" / "fast").config["text_pair_col"] == "hypothesis"
    assert list(board["candidate"]) == ["fast", "slow"]  # lr 1e-5 for 4 short epochs barely moves a tiny model
    assert "Best accuracy: fast" in output


def test_multi_label_candidates_are_ranked_by_micro_f1(multilabel_compare):
    folder, summary = multilabel_compare
    board = check_leaderboard(folder, "multi-label")
    assert set(board["method"]) == {"full", "head"}
    assert summary["recommendation"]["text"].startswith(f"Best micro-F1: {board['candidate'][0]}")
    for name in board["candidate"]:
        assert (folder / "cmp" / "candidates" / name / "thresholds.json").is_file()  # each trained by the multi-label trainer


def test_token_candidates_are_ranked_by_entity_micro_f1(token_compare):
    folder, summary = token_compare
    board = check_leaderboard(folder, "token-classification")
    assert list(board["candidate"]) == ["fast", "slow"]
    assert "entity micro-F1" in (folder / "cmp" / "compare.html").read_text(encoding="utf-8")
    # Run again: both candidates are finished and skipped, the leaderboard is the same.
    again = compare(folder / "compare.yaml", progress=False, isolate=False)
    assert [r["f1_micro"] for r in again["rows"]] == [r["f1_micro"] for r in summary["rows"]]
    # Existing runs through the CLI: the printed table and recommendation are the task's.
    from tunelab.cli import app

    candidates = folder / "cmp" / "candidates"
    result = CliRunner().invoke(app, ["compare", str(candidates / "slow"), str(candidates / "fast"), "--out", str(folder / "cli"), "--latency-texts", "3"])
    assert result.exit_code == 0, result.output
    assert "micro-F1" in result.output and "Best micro-F1: fast" in result.output and "accuracy" not in result.output


def test_runs_of_different_tasks_or_of_a_task_compare_does_not_rank_are_refused(multilabel_compare, token_compare, tmp_path):
    with pytest.raises(TunelabError, match="learn different tasks"):
        compare_runs([multilabel_compare[0] / "cmp" / "candidates" / "full", token_compare[0] / "cmp" / "candidates" / "fast"], out=tmp_path, progress=False)
    reader = tmp_path / "reader"
    shutil.copytree(token_compare[0] / "cmp" / "candidates" / "fast", reader)
    config = yaml.safe_load((reader / "config.yaml").read_text(encoding="utf-8"))
    (reader / "config.yaml").write_text(yaml.safe_dump({**config, "task": "extractive-qa"}), encoding="utf-8")
    with pytest.raises(TunelabError, match="does not handle extractive-qa runs"):
        compare_runs([reader, token_compare[0] / "cmp" / "candidates" / "fast"], out=tmp_path / "x", progress=False)


def test_a_search_over_multi_label_trials_keeps_the_lowest_eval_loss(multilabel_compare, tmp_path, tiny_bert):
    """Multi-label runs keep the epoch with the lowest eval loss: a search over them must prefer the lowest, not the highest."""
    from tunelab.compare import runner
    from tunelab.compare.config import CompareConfig

    template = multilabel_compare[0] / "cmp" / "candidates" / "full"

    def fake_train(settings, progress, isolate):
        shutil.copytree(template, settings.out)
        path = Path(settings.out) / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["train"]["best_eval_loss"] = settings.lr * 100
        path.write_text(json.dumps(metrics))

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(runner, "train_in_process", fake_train)
    try:
        config = CompareConfig(
            task="multi-label",
            data=str(multilabel_compare[0] / "tags.jsonl"),
            label_col="tags",
            out=str(tmp_path / "s"),
            defaults={"model": str(tiny_bert)},
            candidates=[{"name": "tuned", "method": "full", "search": {"lr": [2e-3, 1e-3, 3e-3]}}],
        )
        _, searches = runner.train_candidates(config, progress=False)
    finally:
        monkeypatch.undo()
    assert searches["tuned"]["best_params"] == {"lr": 1e-3} and searches["tuned"]["chosen_on"] == "eval split (loss)"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"task": "pair-classification", "candidates": [{"name": "t", "method": "tfidf-logreg"}]}, "tfidf-logreg is a single-label baseline"),
        ({"task": "pair-classification", "candidates": [{"name": "a", "text_pair_col": "h"}]}, "sets 'text_pair_col', a data setting"),
        ({"task": "token-classification", "candidates": [{"name": "a", "task": "multi-label"}]}, "sets 'task', a data setting"),
        ({"task": "token-classification", "candidates": [{"name": "a", "method": "lora"}]}, "candidate 'a': setting 'method'"),
        ({"text_pair_col": "h", "candidates": [{"name": "a"}]}, "'text_pair_col' is a data setting of another task than classification"),
        ({"task": "ner", "candidates": [{"name": "a"}]}, "setting 'task'"),
    ],
)
def test_task_mistakes_are_named_before_training(tmp_path, spec, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": "x.jsonl", **spec}))
    with pytest.raises(TunelabError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_compare_config(path)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "benchmarks" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_the_shipped_compare_files_are_valid(path):
    config = load_compare_config(path)
    assert config.candidates and config.out
