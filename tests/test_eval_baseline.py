"""Issue 20: every evaluation shows the TF-IDF + logistic-regression baseline on the same rows, and
`data inspect` warns when the training set is small."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests._evaluate_fixtures import run_copy
from tests.conftest import sentiment_frame
from tunelab.cli import app
from tunelab.evaluation import evaluate_run
from tunelab.run import Run

runner = CliRunner()


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline-data") / "reviews.csv"
    sentiment_frame(rows_per_class=40).to_csv(path, index=False)  # 3 classes, learnable from the words alone
    return path


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory, tiny_bert, data_csv):
    """The tiny random BERT barely trained (lr 1e-6, one epoch): worse than TF-IDF on learnable data."""
    from tunelab.config import TrainConfig
    from tunelab.training.classify import train

    out = tmp_path_factory.mktemp("weak") / "run"
    config = TrainConfig(model=str(tiny_bert), data=str(data_csv), epochs=1, lr=1e-6, batch_size=16, seed=3, out=str(out))
    return train(config, progress=False).path


def test_metrics_record_the_baseline_fitted_on_the_runs_own_splits(weak_run):
    run = Run.open(weak_run)
    baseline = run.metrics["baseline"]
    assert baseline["name"] == "tfidf-logreg"
    assert baseline["train_rows"] == len(run.split("train")) == run.data_profile["splits"]["train"]["rows"]
    assert baseline["test_rows"] == len(run.split("test")) == run.metrics["test"]["n"]
    assert 0 < baseline["fit_seconds"] < 30
    assert 0 <= baseline["accuracy"] <= 1 and 0 <= baseline["f1_macro"] <= 1
    assert run.config["baseline"] is True  # the setting is written out with the run


def test_headline_says_the_model_does_not_beat_the_baseline_it_equals(weak_run, data_csv, tmp_path):
    from tunelab.training.baselines import BaselineConfig, train_baseline

    run = Run.open(weak_run)
    metrics = run.metrics
    baseline, comparison = metrics["baseline"], metrics["baseline"]["comparison"]
    assert metrics["accuracy"] < baseline["accuracy"]  # the case this test is about
    assert comparison["beats_baseline"] is False
    assert comparison["accuracy_points"] == pytest.approx(100 * (metrics["accuracy"] - baseline["accuracy"]))
    assert comparison["f1_macro_points"] == pytest.approx(100 * (metrics["f1_macro"] - baseline["f1_macro"]))
    low, high = comparison["accuracy_points_ci95"]
    assert low <= comparison["accuracy_points"] <= high < 0 and comparison["within_noise"] is False
    headline = comparison["headline"]
    assert "does not beat" in headline and f"same {baseline['test_rows']} test rows" in headline
    assert any("more epochs" in tip for tip in comparison["advice"])
    page = (weak_run / "report.html").read_text()
    assert html.escape(headline) in page and "What to try" in page

    # The same figure as `tunelab compare`'s tfidf-logreg candidate fitted on the same data and seed directly.
    direct = train_baseline(BaselineConfig(data=str(data_csv), seed=3, out=str(tmp_path / "tfidf")), progress=False)
    assert direct.split("train")["text"].tolist() == run.split("train")["text"].tolist()
    assert direct.split("test")["text"].tolist() == run.split("test")["text"].tolist()
    assert baseline["accuracy"] == pytest.approx(direct.metrics["accuracy"])
    assert baseline["f1_macro"] == pytest.approx(direct.metrics["f1_macro"])
    assert baseline["C"] == direct.config["C"]


def test_cli_eval_prints_the_headline_and_no_baseline_leaves_it_out(weak_run, tmp_path):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(weak_run, run)
    shown = runner.invoke(app, ["eval", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "does not beat the TF-IDF" in shown.output and "try: more training data" in shown.output

    result = runner.invoke(app, ["eval", str(run), "--no-baseline", "--json"])
    assert result.exit_code == 0, result.output
    assert "baseline" not in json.loads(result.stdout)
    assert "baseline" not in json.loads((run / "metrics.json").read_text())  # the earlier comparison is removed too
    assert 'id="baseline-headline"' not in (run / "report.html").read_text()


def test_train_summary_prints_the_headline(weak_run, capsys):
    from tunelab.cli.core import print_run_summary

    print_run_summary(Run.open(weak_run), next_steps=True)
    printed = capsys.readouterr().out
    assert Run.open(weak_run).metrics["baseline"]["comparison"]["headline"] in printed
    assert "try: more epochs" in printed
    # The commands it suggests are whole lines whatever the console's width (here 80: not a terminal), so they paste.
    assert f'  tunelab predict {Run.open(weak_run).path} "Shares in the carmaker rose after record sales"\n' in printed
    assert f"run directory: {Run.open(weak_run).path}\n" in printed


def test_train_no_baseline_is_a_setting_of_the_run(tiny_bert, data_csv, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--model", str(tiny_bert), "--data", str(data_csv), "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-baseline"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["baseline"] is False
    assert "baseline" not in json.loads((out / "metrics.json").read_text())
    assert "beat" not in result.output
    # `tunelab eval` follows the run's setting unless told otherwise.
    assert "baseline" not in evaluate_run(out, progress=False)
    assert evaluate_run(out, progress=False, baseline=True)["baseline"]["train_rows"] == len(Run.open(out).split("train"))


def test_compare_still_reuses_a_finished_candidate_from_before_the_setting(weak_run, tmp_path):
    """`baseline` changes the evaluation, not the model: a candidate trained without the key is not retrained."""
    import shutil

    from tunelab.compare.runner import check_same_settings
    from tunelab.config import TrainConfig

    final = Path(shutil.copytree(weak_run, tmp_path / "candidate"))
    stored = yaml.safe_load((final / "config.yaml").read_text())
    settings = TrainConfig(**{k: v for k, v in stored.items() if k in TrainConfig.model_fields})
    del stored["baseline"]
    (final / "config.yaml").write_text(yaml.safe_dump(stored))
    check_same_settings(settings, final, "tiny")  # no "the finished run has baseline=None" refusal


def test_baseline_follows_the_runs_label_order(weak_run):
    """Label ids index labels.json, whatever its order: the baseline's predictions must use the same mapping."""
    run = Run.open(weak_run)
    test = run.split("test")
    from tunelab.evaluation.baseline import fit_and_score

    scores = {}
    for labels in (["negative", "neutral", "positive"], ["positive", "negative", "neutral"]):
        y_true = test["label"].map({label: i for i, label in enumerate(labels)}).to_numpy()
        figures, correct = fit_and_score(run, test["text"].tolist(), y_true, labels)
        scores[tuple(labels)] = figures["accuracy"]
        assert figures["accuracy"] == pytest.approx(correct.mean())
    assert len(set(scores.values())) == 1 and min(scores.values()) > 0.8  # learnable: far above 1/3 either way


def test_baseline_is_fitted_on_train_with_c_chosen_on_eval_never_on_the_scored_rows(weak_run, monkeypatch):
    from tunelab.evaluation.baseline import fit_and_score
    from tunelab.models import linear

    seen = {}
    fit = linear.fit_tfidf_logreg

    def spy(texts, y, labels, seed=42):
        seen.update(texts=texts, seed=seed)
        return fit(texts, y, labels, seed)

    monkeypatch.setattr(linear, "fit_tfidf_logreg", spy)
    run = Run.open(weak_run)
    test = run.split("test")
    fit_and_score(run, test["text"].tolist(), test["label"].map(run.labels.index).to_numpy(), run.labels)
    assert seen["texts"]["train"] == run.split("train")["text"].tolist()
    assert seen["texts"]["eval"] == run.split("eval")["text"].tolist()
    assert seen["seed"] == run.config["seed"] == 3


def test_run_without_a_train_split_says_why_instead_of_failing(tmp_path_factory, tmp_path):
    run = run_copy(tmp_path_factory, tmp_path, ["business", "sport", "tech"])  # the fixture saves only a test split
    metrics = evaluate_run(run, progress=False)
    assert "no saved train split" in metrics["baseline"]["missing"] and "comparison" not in metrics["baseline"]
    assert "accuracy" in metrics
    assert "No baseline comparison: the run has no saved train split" in (run / "report.html").read_text()


def test_comparison_when_the_model_beats_the_baseline():
    from tunelab.evaluation.baseline import comparison

    n = 400
    model_correct = np.ones(n, dtype=bool)
    baseline_correct = np.arange(n) % 4 != 0  # 75%
    figures = {"accuracy": 0.75, "f1_macro": 0.74, "train_rows": 3000}
    test = {"accuracy": 1.0, "f1_macro": 1.0}
    result = comparison(figures, test, model_correct, baseline_correct, {"kind": "transformers", "epochs": 3, "lr": 1e-4})
    assert result["beats_baseline"] is True and result["advice"] == []
    assert result["headline"].startswith("The fine-tuned model beats the TF-IDF")
    assert "larger than noise" in result["headline"] and result["within_noise"] is False
    assert result["accuracy_points"] == pytest.approx(25.0)

    # One row better out of 20: a gap inside the bootstrap interval.
    close = comparison({**figures, "accuracy": 0.95, "f1_macro": 0.95}, {"accuracy": 1.0, "f1_macro": 1.0}, np.ones(20, dtype=bool), np.arange(20) != 0, {})
    assert close["beats_baseline"] is True and close["within_noise"] is True and "within noise" in close["headline"]


def test_data_inspect_warns_on_small_training_sets_only(tmp_path):
    from tunelab.config import SMALL_DATA_ROWS
    from tunelab.inspection import inspect_source

    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    sentiment_frame(rows_per_class=40).to_csv(small, index=False)  # 120 rows: 96 train after eval/test
    sentiment_frame(rows_per_class=450).to_csv(large, index=False)  # 1,350 rows: 1,080 train
    profile = inspect_source(str(small), model=None)
    assert profile["train_rows"] == 96 < SMALL_DATA_ROWS
    warning = profile["warnings"][0]
    assert warning.startswith("small training set: 96 training rows")
    assert "TF-IDF" in warning and "evaluation report compares" in warning and "will use the recipe" in warning
    big = inspect_source(str(large), model=None)
    assert big["train_rows"] >= SMALL_DATA_ROWS
    assert not any("small training set" in w for w in big["warnings"])

    shown = runner.invoke(app, ["data", "inspect", str(small), "--model", ""])
    assert shown.exit_code == 0, shown.output
    assert "small training set" in shown.output


def test_advice_gives_the_small_data_reason_only_below_the_small_data_line():
    from tunelab.config import SMALL_DATA_ROWS
    from tunelab.evaluation.baseline import advice

    config = {"epochs": 2.0, "lr": 2e-4}
    few, many = (advice({"train_rows": rows}, config, {})[0] for rows in (SMALL_DATA_ROWS - 1, SMALL_DATA_ROWS))
    assert few == f"more training data: this run trained on {SMALL_DATA_ROWS - 1} rows (on a few hundred rows this baseline often wins)"
    assert many == f"more training data: this run trained on {SMALL_DATA_ROWS} rows"
