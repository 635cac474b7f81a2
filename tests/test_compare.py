"""tunelab compare: candidates on identical splits, the leaderboard against each run's metrics.json, resume."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import sentiment_frame
from tunelab.compare import compare, compare_runs, load_compare_config
from tunelab.compare.leaderboard import fingerprint_test_set, pareto_optimal, recommend
from tunelab.errors import TunelabError
from tunelab.run import Run

CANDIDATES = ("tiny-full", "tfidf", "embeddings")


def write_compare_file(folder, model, data, candidates, **top) -> str:
    path = folder / "compare.yaml"
    spec = {"data": str(data), "seed": 3, "out": str(folder / "cmp"), "defaults": {"model": str(model)}, "candidates": candidates, **top}
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_bert):
    """One compare of three candidates (fine-tuned tiny BERT, TF-IDF, frozen embeddings), trained in-process for speed."""
    folder = tmp_path_factory.mktemp("compare")
    data = folder / "reviews.csv"
    sentiment_frame(rows_per_class=40, seed=5).to_csv(data, index=False)
    config = write_compare_file(
        folder,
        tiny_bert,
        data,
        [
            {"name": "tiny-full", "method": "full", "epochs": 3, "lr": 3e-3, "batch_size": 16},
            {"name": "tfidf", "method": "tfidf-logreg"},
            {"name": "embeddings", "method": "embeddings-logreg"},
        ],
        latency_texts=10,
        throughput_texts=40,
    )
    summary = compare(config, latency_budget_ms=10_000, progress=False, isolate=False)
    return folder, config, summary


def test_leaderboard_rows_match_each_candidates_metrics(compared):
    folder, _, summary = compared
    board = pd.read_csv(folder / "cmp" / "leaderboard.csv")
    assert sorted(board["candidate"]) == sorted(CANDIDATES)
    assert list(board["accuracy"]) == sorted(board["accuracy"], reverse=True)
    assert list(board["rank"]) == [1, 2, 3]
    for row in board.to_dict("records"):
        run = Run.open(folder / "cmp" / "candidates" / row["candidate"])
        metrics = run.metrics
        assert row["accuracy"] == pytest.approx(metrics["accuracy"])
        assert row["f1_macro"] == pytest.approx(metrics["f1_macro"])
        assert row["test_loss"] == pytest.approx(metrics["loss"])
        for column, key in (
            ("train_time_s", "train_runtime_s"),
            ("train_samples_per_s", "train_samples_per_second"),
            ("peak_memory_mb", "peak_memory_mb"),
            ("parameters", "parameters"),
            ("trainable_parameters", "trainable_parameters"),
        ):
            assert row[column] == pytest.approx(metrics["train"][key]), column
        assert not math.isnan(row["eval_loss"])
        assert row["size_mb"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["examples_per_s"] > 0
        assert row["method"] == run.config["method"]
    # A frozen encoder has all its weights but trains only the logistic regression.
    emb = board.set_index("candidate").loc["embeddings"]
    assert emb["trainable_parameters"] < emb["parameters"]
    # Pareto flags agree with a recomputation from the written numbers.
    rows = board.to_dict("records")
    assert list(board["pareto_latency"]) == pareto_optimal(rows, "latency_p50_ms")
    assert list(board["pareto_train_time"]) == pareto_optimal(rows, "train_time_s")
    assert summary["recommendation"]["best"] == board.iloc[0]["candidate"]


def test_every_candidate_saw_identical_splits(compared):
    folder, _, _ = compared
    runs = [Run.open(folder / "cmp" / "candidates" / name) for name in CANDIDATES]
    for split in ("train", "eval", "test"):
        frames = [run.split(split) for run in runs]
        for frame in frames[1:]:
            pd.testing.assert_frame_equal(frame, frames[0])
    assert len({fingerprint_test_set(run)["sha256"] for run in runs}) == 1


def test_outputs_are_written_and_self_contained(compared):
    folder, _, summary = compared
    out = folder / "cmp"
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    for name in CANDIDATES:
        assert f"| {name} |" in md
    assert summary["recommendation"]["text"] in md
    assert "Best within a 10000 ms p95 latency budget" in md
    page = (out / "compare.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page
    assert (out / "plots" / "pareto_latency.png").stat().st_size > 1000
    assert json.loads((out / "leaderboard.json").read_text())["rows"] == summary["rows"]


def test_baseline_is_a_run_that_model_loading_refuses_clearly(compared, tmp_path):
    from tunelab.cli import app

    folder, _, _ = compared
    tfidf = Run.open(folder / "cmp" / "candidates" / "tfidf")
    assert tfidf.kind == "sklearn" and (tfidf.path / "model.joblib").is_file() and not (tfidf.path / "model").exists()
    for key in ("accuracy", "f1_macro", "loss", "test", "train", "environment", "evaluated_on"):
        assert key in tfidf.metrics
    assert (tfidf.path / "predictions.parquet").is_file() and (tfidf.path / "report.html").is_file()
    with pytest.raises(TunelabError, match="scikit-learn baseline"):
        tfidf.model_dir  # noqa: B018
    result = CliRunner().invoke(app, ["predict", str(tfidf.path), "great food"])
    assert result.exit_code == 2
    assert "scikit-learn baseline" in result.output and "Traceback" not in result.output


def test_rerun_skips_finished_and_trains_only_what_is_missing(compared):
    folder, config, _ = compared
    candidates = folder / "cmp" / "candidates"
    stamps = {name: (candidates / name / "metrics.json").stat().st_mtime_ns for name in CANDIDATES}
    before = Run.open(candidates / "tfidf").metrics["accuracy"]
    shutil.rmtree(candidates / "tfidf")  # as if the compare had been interrupted before this candidate finished
    (candidates / ".tfidf.partial").mkdir()  # with its staging folder left behind
    compare(config, progress=False, isolate=False)
    assert (candidates / "tiny-full" / "metrics.json").stat().st_mtime_ns == stamps["tiny-full"]
    assert (candidates / "embeddings" / "metrics.json").stat().st_mtime_ns == stamps["embeddings"]
    tfidf = Run.open(candidates / "tfidf")
    # The same settings on the same splits: the retrained candidate is the one that was lost...
    assert tfidf.metrics["accuracy"] == pytest.approx(before)
    # ...and it learned: every review holds two words of its class's list, so TF-IDF gets at most one of
    # the 12 test rows wrong, where guessing (or a model fitted to the wrong labels) gets about a third right.
    assert tfidf.metrics["accuracy"] >= 11 / 12
    predictions = pd.read_parquet(tfidf.path / "predictions.parquet")
    assert predictions["label"].tolist() == tfidf.split("test")["label"].tolist()
    assert tfidf.metrics["accuracy"] == pytest.approx(predictions["correct"].mean())
    assert not (candidates / ".tfidf.partial").exists()


def test_changed_settings_of_a_finished_candidate_are_refused(compared):
    folder, config, _ = compared
    spec = yaml.safe_load(open(config))
    spec["candidates"][0]["lr"] = 1e-2
    changed = folder / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    with pytest.raises(TunelabError, match="tiny-full.*lr"):
        compare(str(changed), progress=False, isolate=False)


def test_compare_refuses_runs_on_different_test_sets(compared, tmp_path):
    from tunelab.cli import app
    from tunelab.training.baselines import BaselineConfig, train_baseline

    folder, _, _ = compared
    other = train_baseline(BaselineConfig(data=str(folder / "reviews.csv"), seed=99, out=str(tmp_path / "other")), progress=False)
    tfidf = folder / "cmp" / "candidates" / "tfidf"
    with pytest.raises(TunelabError, match="different test sets"):
        compare_runs([tfidf, other.path], out=tmp_path / "x", progress=False)
    result = CliRunner().invoke(app, ["compare", str(tfidf), str(other.path), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "different test sets" in result.output
    # The same runs compare fine with each other.
    summary = compare_runs([tfidf, folder / "cmp" / "candidates" / "embeddings"], out=tmp_path / "z", latency_texts=5, progress=False)
    assert {r["candidate"] for r in summary["rows"]} == {"tfidf", "embeddings"}


def test_cli_trains_candidates_in_their_own_processes(tmp_path, tiny_bert):
    """The default path: each candidate in a spawned process; a user error there is one line, exit 2."""
    from tunelab.cli import app

    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=20).to_csv(data, index=False)
    good = write_compare_file(tmp_path, tiny_bert, data, [{"name": "tfidf", "method": "tfidf-logreg"}], latency_texts=5, throughput_texts=10)
    result = CliRunner().invoke(app, ["compare", good, "--latency-budget-ms", "5000"])
    assert result.exit_code == 0, result.output
    assert "Best accuracy: tfidf" in result.output
    board = pd.read_csv(tmp_path / "cmp" / "leaderboard.csv")
    assert board["peak_memory_mb"].iloc[0] == pytest.approx(Run.open(tmp_path / "cmp" / "candidates" / "tfidf").metrics["train"]["peak_memory_mb"])

    bad = write_compare_file(tmp_path, tiny_bert, data, [{"name": "long", "method": "full", "max_length": 100_000}])
    result = CliRunner().invoke(app, ["compare", bad, "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2
    assert "exceeds the model's limit" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "candidates, message",
    [
        ([{"name": "a", "method": "full", "data": "x.csv"}], "sets 'data', a data setting"),
        ([{"name": "a", "method": "lorra"}], "did you mean 'lora'"),
        ([{"name": "a", "method": "full"}, {"name": "a", "method": "head"}], "used twice"),
        ([{"name": "a", "method": "full", "learning_rate": 1e-3}], "unknown setting 'learning_rate'"),
        ([{"name": "a", "method": "tfidf-logreg", "search": {"lr": [1e-3]}}], "remove its search"),
        ([{"name": "a", "method": "full", "epochs": -1}], "candidate 'a': setting 'epochs'"),
        ([{"name": "../a", "method": "full"}], "name"),
        ([{"name": "a", "method": "full", "out": "elsewhere"}], "sets 'out'"),
    ],
)
def test_compare_file_mistakes_are_named_before_training(tmp_path, candidates, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": "reviews.csv", "candidates": candidates}))
    with pytest.raises(TunelabError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_compare_config(path)


def test_pareto_and_recommendation():
    rows = [
        {"candidate": "big", "accuracy": 0.95, "f1_macro": 0.95, "latency_p95_ms": 40.0, "latency_p50_ms": 30.0},
        {"candidate": "small", "accuracy": 0.90, "f1_macro": 0.90, "latency_p95_ms": 4.0, "latency_p50_ms": 3.0},
        {"candidate": "worse", "accuracy": 0.85, "f1_macro": 0.85, "latency_p95_ms": 50.0, "latency_p50_ms": 35.0},
        {"candidate": "tie", "accuracy": 0.90, "f1_macro": 0.90, "latency_p95_ms": 4.0, "latency_p50_ms": 3.0},
    ]
    assert pareto_optimal(rows, "latency_p50_ms") == [True, True, False, True]
    assert recommend(rows, None)["best"] == "big"
    within = recommend(rows, 10)
    assert within["within_budget"] == "small" and "10 ms" in within["text"]
    assert recommend(rows, 1)["within_budget"] is None


def test_search_picks_the_best_trial_on_the_eval_split_never_test(compared, tmp_path, monkeypatch, tiny_bert):
    """Trials whose eval and test accuracy disagree: the winner must be the eval split's choice."""
    from pathlib import Path

    from tunelab.compare import runner
    from tunelab.compare.config import CompareConfig

    template = compared[0] / "cmp" / "candidates" / "tfidf"
    trained = []

    def fake_train(settings, progress, isolate):  # a real run directory with chosen numbers, in milliseconds
        trained.append(settings.lr)
        shutil.copytree(template, settings.out)
        (Path(settings.out) / "config.yaml").write_text(yaml.safe_dump({**settings.model_dump(), "kind": "sklearn"}))
        path = Path(settings.out) / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["train"]["best_eval_accuracy"] = settings.lr * 100  # eval prefers the largest lr ...
        metrics["accuracy"] = 1 - settings.lr * 100  # ... the test split the smallest
        path.write_text(json.dumps(metrics))

    monkeypatch.setattr(runner, "train_in_process", fake_train)
    config = CompareConfig(
        data=str(compared[0] / "reviews.csv"),
        out=str(tmp_path / "s"),
        defaults={"model": str(tiny_bert)},
        candidates=[{"name": "tuned", "method": "full", "search": {"strategy": "grid", "lr": [1e-3, 5e-3, 2e-3]}}],
    )
    runs, searches = runner.train_candidates(config, progress=False)
    assert trained == [1e-3, 5e-3, 2e-3]
    chosen = Run.open(runs["tuned"])
    assert chosen.config["lr"] == 5e-3 and chosen.config["out"] == str(tmp_path / "s" / "candidates" / "tuned")
    assert searches["tuned"]["best_params"] == {"lr": 5e-3} and len(searches["tuned"]["trials"]) == 3
    assert not (tmp_path / "s" / "trials").exists()  # losing trials removed; their numbers stay in search.json
    runner.train_candidates(config, progress=False)  # finished: nothing is trained again
    assert len(trained) == 3
    changed = config.model_copy(
        update={"candidates": [config.candidates[0].model_copy(update={"search": config.candidates[0].search.model_copy(update={"lr": [1e-3]})})]}
    )
    with pytest.raises(TunelabError, match="other hyperparameters"):
        runner.train_candidates(changed, progress=False)


def test_search_trials_grid_and_random():
    from tunelab.compare.config import SearchSpec

    grid = SearchSpec(lr=[1e-4, 3e-4], epochs=[1, 2], batch_size=[16]).trials_list(seed=0)
    assert len(grid) == 4 and {t["lr"] for t in grid} == {1e-4, 3e-4} and all(t["batch_size"] == 16 for t in grid)
    spec = SearchSpec(strategy="random", trials=6, lr={"low": 1e-5, "high": 1e-3}, batch_size=[8, 16])
    first, again = spec.trials_list(seed=7), spec.trials_list(seed=7)
    assert first == again and len(first) == 6  # seeded: a rerun finds its finished trials again
    assert all(1e-5 <= t["lr"] <= 1e-3 and t["batch_size"] in (8, 16) for t in first)
    with pytest.raises(TunelabError, match="grid search needs a list"):
        SearchSpec(lr={"low": 1e-5, "high": 1e-3}).trials_list(seed=0)
    with pytest.raises(TunelabError, match="at least one of"):
        SearchSpec().trials_list(seed=0)
