"""evaluate_run and `tunelab eval` on a real (tiny) run directory: artefacts, merging, errors, CLI."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss
from typer.testing import CliRunner

from tests._evaluate_fixtures import run_copy
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.evaluation import evaluate_run
from tunelab.run import Run

LABELS = ["business", "sport", "tech"]


@pytest.fixture
def run(tmp_path_factory, tmp_path):
    return run_copy(tmp_path_factory, tmp_path, LABELS)


def test_evaluate_run_writes_every_artefact_and_merges_metrics(run):
    metrics = evaluate_run(run, progress=False)

    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["train"]["best_checkpoint"] == "checkpoint-40"  # training's keys survive the merge
    assert saved["environment"]["cores"] == 2
    test = saved["test"]
    assert (saved["loss"], saved["accuracy"], saved["f1_macro"]) == (test["loss"], test["accuracy"], test["f1_macro"])
    assert test["timing"]["examples"] == 60 and test["timing"]["examples_per_second"] > 0
    assert test["timing"]["latency_ms_p50"] > 0
    assert saved["generalisation"]["verdict"] == "overfitting"  # the fixture's eval loss rises after epoch 2

    # predictions.parquet holds the same numbers: recompute the headline metrics from it with scikit-learn.
    preds = pd.read_parquet(run / "predictions.parquet")
    assert list(preds.columns) == ["text", "label", "predicted", "confidence", "correct"] + [f"prob_{x}" for x in LABELS]
    assert preds["text"].tolist() == Run(run).split("test")["text"].tolist()
    proba = preds[[f"prob_{x}" for x in LABELS]].to_numpy()
    y = preds["label"].map(LABELS.index).to_numpy()
    assert test["accuracy"] == pytest.approx(accuracy_score(preds["label"], preds["predicted"]))
    assert test["f1_macro"] == pytest.approx(f1_score(preds["label"], preds["predicted"], average="macro"))
    assert test["loss"] == pytest.approx(log_loss(y, proba, labels=[0, 1, 2]))
    assert 0.5 < test["accuracy"] < 1.0  # the tiny model is trained: right often, not always

    # Inference is the shared Classifier's: same probabilities as predict uses.
    from tunelab.models.classifier import Classifier

    direct = Classifier.load(run / "model").predict_proba(preds["text"].tolist())
    assert np.allclose(direct, proba, atol=1e-5)

    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["accuracy.png", "confusion_matrix.png", "loss.png", "precision_recall.png", "reliability.png", "roc.png"]
    assert all((run / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    page = (run / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from the network
    worst = preds[~preds["correct"]].sort_values("confidence", ascending=False).iloc[0]
    assert html.escape(worst["text"]) in page  # the most confident mistake is listed
    assert "texts also appear in train" in page  # data-profile warning


def test_unknown_label_is_named(run, tmp_path):
    data = pd.DataFrame({"text": ["a market", "a game", "a chip"], "label": ["business", "sprots", "tech"]})
    with pytest.raises(TunelabError) as error:
        evaluate_run(run, data=data, progress=False)
    assert "'sprots' (1 rows)" in str(error.value) and "did you mean 'sport'" in str(error.value)
    # a source path works too (tunelab.evaluate(run, "file.csv") in a notebook)
    data.to_csv(tmp_path / "typo.csv", index=False)
    with pytest.raises(TunelabError, match=r"typo.csv has label the model was not trained on: 'sprots'"):
        evaluate_run(run, data=tmp_path / "typo.csv", progress=False)


def test_class_absent_from_data_is_reported_not_a_crash(run, tmp_path):
    test = Run(run).split("test")
    data = test[test["label"] != "sport"]
    metrics = evaluate_run(run, data=data, out_dir=tmp_path / "out", data_name="no-sport.csv", progress=False)
    assert metrics["test"]["absent_classes"] == ["sport"]
    assert metrics["test"]["roc_auc"]["per_class"]["sport"] is None
    assert metrics["test"]["roc_auc"]["per_class"]["tech"] is not None
    assert "'sport' does not occur" in html.unescape((tmp_path / "out" / "report.html").read_text())
    # --out leaves the run's own metrics alone, and carries the training facts to the new folder.
    assert "test" not in json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 3 and metrics["evaluated_on"]["source"] == "no-sport.csv"


def test_binary_run(tmp_path_factory, tmp_path):
    run = run_copy(tmp_path_factory, tmp_path, ["negative", "positive"], n_test=20, train=False)
    metrics = evaluate_run(run, progress=False)
    assert "top_2_accuracy" not in metrics["test"]
    assert metrics["test"]["n"] == 20 and (run / "report.html").is_file()


runner = CliRunner()


def test_cli_json_on_other_data(run, tmp_path):
    frame = Run(run).split("test").rename(columns={"text": "body", "label": "topic"})
    csv = tmp_path / "other.csv"
    frame.to_csv(csv, index=False)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(run), "--data", str(csv), "--text-col", "body", "--label-col", "topic", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["evaluated_on"] == {"source": str(csv), "rows": 60, "run": str(run)}
    assert metrics["accuracy"] == json.loads((out / "metrics.json").read_text())["accuracy"]
    assert (out / "report.html").is_file() and (out / "predictions.parquet").is_file()


def test_cli_unknown_label_is_one_line_exit_2(run, tmp_path):
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["a market"], "label": ["finance"]}).to_csv(csv, index=False)
    result = runner.invoke(app, ["eval", str(run), "--data", str(csv)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'finance'" in lines[0] and "business, sport, tech" in lines[0]


def test_cli_bias_with_user_pairs(run, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("[topics]\nmarket, game\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", str(run), "--bias", str(pairs)])
    assert result.exit_code == 0, result.output
    bias = json.loads((run / "metrics.json").read_text())["bias"]["lists"]
    assert {"pronouns", "first names", "topics"} <= set(bias)
    # Swapping a topic word changes the topic, so this list must flip predictions: the probe sees real changes.
    assert bias["topics"]["flipped"] > 0 and bias["topics"]["examples"]
    assert bias["pronouns"]["texts_probed"] == 60
    assert "Flipped examples: topics" in html.unescape((run / "report.html").read_text())
    assert "bias probe 'topics'" in result.stdout


def test_cli_pairs_file_without_bias_is_refused(run, tmp_path):
    result = runner.invoke(app, ["eval", str(run), str(tmp_path / "pairs.txt")])
    assert result.exit_code == 2 and "goes after --bias" in result.stderr


def test_train_ends_with_an_evaluation(trained_run):
    """The lead's train() calls evaluate_run: a finished run already has the report and test metrics."""
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"train", "test", "loss", "accuracy", "f1_macro"} <= set(metrics)
    assert (trained_run / "report.html").is_file() and (trained_run / "predictions.parquet").is_file()
    assert metrics["evaluated_on"]["run"] == str(trained_run)  # not the staging folder it was evaluated in
    assert len(list((trained_run / "plots").glob("*.png"))) == 6
