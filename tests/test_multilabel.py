"""Multi-label classification: label sets (lists, separators, bad values), splits, thresholds chosen on
eval, metrics equal to scikit-learn's, a run trained on a tiny BERT, predict, eval, inspect and the CLI's errors,
and its backends (the exported logits, gated on label sets) in predict, eval and serve."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support, roc_auc_score
from typer.testing import CliRunner

from tests.conftest import FILLER, NEGATIVE, NEUTRAL, POSITIVE
from tests.test_cli_errors import assert_user_error
from tunelab.cli import app
from tunelab.data.multilabel import detect_label_sets, load_multilabel_source, make_multilabel_splits, multi_hot, parse_label_set
from tunelab.errors import TunelabError
from tunelab.evaluation.multilabel_metrics import multilabel_metrics
from tunelab.models.multilabel import MIN_POSITIVES, MultiLabelClassifier, best_f1_threshold, choose_thresholds, sigmoid
from tunelab.run import Run

runner = CliRunner()
POOLS = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": NEUTRAL}


def tags_frame(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Each row draws words from one to three pools; its labels are the pools it drew from (learnable)."""
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        chosen = sorted(rng.sample(list(POOLS), rng.choice([1, 1, 2, 2, 3])))
        words = [word for pool in chosen for word in rng.sample(POOLS[pool], 2)] + rng.sample(FILLER, 3)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "tags": chosen})
    return pd.DataFrame(out)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, tiny_bert) -> Path:
    """One multi-label run trained through the CLI, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("ml-run")
    data = folder / "tags.jsonl"
    tags_frame().to_json(data, orient="records", lines=True)
    result = cli(
        "train",
        "--task",
        "multi-label",
        "--model",
        tiny_bert,
        "--data",
        data,
        "--label-col",
        "tags",
        "--epochs",
        8,
        "--lr",
        1e-3,
        "--seed",
        1,
        "--out",
        folder / "run",
    )
    assert result.exit_code == 0, result.output
    return folder / "run"


# -- label sets --------------------------------------------------------------------------------


def test_label_sets_from_lists_and_separated_strings():
    assert parse_label_set(["b", "a", "b", " c "], None) == ["a", "b", "c"]
    assert parse_label_set(np.array(["x", "y"]), None) == ["x", "y"]  # a Parquet list cell
    assert parse_label_set([], None) == []
    assert parse_label_set([1.0, 2], None) == ["1", "2"]
    assert parse_label_set("sports| politics ||", "|") == ["politics", "sports"]
    assert parse_label_set(None, "|") is None and parse_label_set(float("nan"), None) is None


@pytest.mark.parametrize(
    ("value", "sep", "fragment"),
    [("sports", None, "is a string, not a list of labels"), (3, None, "is not a list of labels"), ([["a"]], None, "not a label name")],
)
def test_a_label_value_that_is_not_a_list_names_the_row(value, sep, fragment):
    with pytest.raises(TunelabError, match=fragment) as error:
        parse_label_set(value, sep, "data.jsonl", 7)
    assert "data.jsonl, row 7" in error.value.message


def test_sources_in_every_format_give_the_same_label_sets(tmp_path):
    frame = pd.DataFrame({"text": ["good one", "bad one", "plain one"], "tags": [["pos", "x"], ["neg"], []]})
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "d.parquet")
    frame.assign(tags=frame["tags"].map("|".join)).to_csv(tmp_path / "d.csv", index=False)
    expected = [["pos", "x"], ["neg"]]  # the CSV's empty cell is a missing value: that row is dropped
    assert load_multilabel_source(tmp_path / "d.jsonl", label_col="tags")["labels"].tolist() == [*expected, []]
    assert load_multilabel_source(tmp_path / "d.parquet", label_col="tags")["labels"].tolist() == [*expected, []]
    loaded = load_multilabel_source(tmp_path / "d.csv", label_col="tags", label_sep="|")
    assert loaded["labels"].tolist() == expected and loaded.attrs["dropped"]["missing_label"] == 1


def test_multi_hot_refuses_a_label_the_model_does_not_know():
    assert multi_hot([["b"], ["a", "b"], []], ["a", "b"]).tolist() == [[0, 1], [1, 1], [0, 0]]
    with pytest.raises(TunelabError, match="'c' \\(1 rows\\)"):
        multi_hot([["c"]], ["a", "b"])


def test_splits_reach_every_label_and_keep_repeats_together():
    frame = tags_frame(200, seed=3)
    rare = pd.DataFrame({"text": [f"rare text {i}" for i in range(6)], "tags": [["rare"]] * 6})
    frame = pd.concat([frame, rare, frame.head(5)], ignore_index=True).rename(columns={"tags": "labels"})
    splits = make_multilabel_splits(frame, seed=0)
    for name, split in splits.items():
        assert any("rare" in labels for labels in split["labels"]), name  # stratified by the rarest label
    texts = [set(split["text"]) for split in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert sum(len(s) for s in splits.values()) == len(frame)


def test_a_label_too_rare_to_split_is_named():
    frame = tags_frame(60).rename(columns={"tags": "labels"})
    frame.loc[0, "labels"] = ["positive", "unique"]
    with pytest.raises(TunelabError, match="'unique' \\(1\\)"):
        make_multilabel_splits(frame)


# -- thresholds and metrics ----------------------------------------------------------------------


def test_best_f1_threshold_sits_between_the_lowest_accepted_and_the_next_score():
    y = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1])
    # Accepting the top four (3 of 3 positives, one false) gives F1 6/7, the best; the next lower score is 0.3.
    threshold, f1 = best_f1_threshold(y, scores)
    assert threshold == pytest.approx((0.6 + 0.3) / 2)
    assert f1 == pytest.approx(6 / 7)


def test_labels_with_few_positive_eval_rows_take_the_pooled_threshold():
    rng = np.random.default_rng(0)
    y = np.zeros((40, 2), dtype=int)
    y[:20, 0] = 1
    y[:2, 1] = 1  # 2 < MIN_POSITIVES
    proba = np.clip(y * 0.6 + rng.uniform(0, 0.4, size=y.shape), 0, 1)
    chosen = choose_thresholds(y, proba, ["common", "rare"], "the eval split (40 rows)")
    assert MIN_POSITIVES > 2
    assert chosen["per_label"]["common"]["chosen_by"] == "label"
    assert chosen["per_label"]["common"]["threshold"] == pytest.approx(best_f1_threshold(y[:, 0], proba[:, 0])[0])
    assert chosen["per_label"]["rare"]["chosen_by"] == "pooled"
    assert chosen["values"][1] == pytest.approx(best_f1_threshold(y.ravel(), proba.ravel())[0])


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(60, 4)) < 0.35).astype(int)
    proba = np.clip(0.5 * y + rng.uniform(0, 0.6, size=y.shape), 0, 1)
    thresholds = [0.5, 0.4, 0.6, 0.55]
    predicted = (proba >= np.array(thresholds)).astype(int)
    labels = ["a", "b", "c", "d"]
    metrics = multilabel_metrics(y, proba, thresholds, labels)
    for average in ("micro", "macro", "samples"):
        assert metrics[f"f1_{average}"] == pytest.approx(f1_score(y, predicted, average=average, zero_division=0))
    assert metrics["subset_accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(y, predicted))
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, average=None, zero_division=0)
    for j, label in enumerate(labels):
        row = metrics["per_label"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((precision[j], recall[j], f1[j], support[j]))
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y[:, j], proba[:, j]))
    assert metrics["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, proba, average="macro"))
    assert metrics["roc_auc"]["micro"] == pytest.approx(roc_auc_score(y, proba, average="micro"))
    assert metrics["cooccurrence"]["counts"] == (y.T @ y).tolist()


def test_a_label_absent_from_the_data_has_no_roc_auc_and_a_reason():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    metrics = multilabel_metrics(y, np.full((3, 2), 0.5), [0.5, 0.5], ["a", "b"])
    assert metrics["per_label"]["b"]["roc_auc"] is None
    assert "no row has it" in metrics["roc_auc"]["undefined"]["b"]


# -- a trained run -------------------------------------------------------------------------------


def test_training_writes_a_complete_run_with_thresholds_chosen_on_eval(ml_run):
    run = Run.open(ml_run)
    assert run.task == "multi-label" and run.labels == ["negative", "neutral", "positive"]
    for name in ("config.yaml", "labels.json", "thresholds.json", "metrics.json", "predictions.parquet", "report.html", "splits/eval.parquet"):
        assert (ml_run / name).is_file(), name
    assert {p.name for p in (ml_run / "plots").iterdir()} >= {"roc.png", "cooccurrence.png", "loss.png"}
    metrics = run.metrics
    assert metrics["thresholds"]["chosen_on"] == f"the eval split ({len(run.split('eval'))} rows)"
    # The thresholds are what choose_thresholds gives on the eval split's probabilities.
    classifier = MultiLabelClassifier.load(run)
    eval_split = run.split("eval")
    proba = classifier.predict_proba(eval_split["text"].tolist())
    again = choose_thresholds(multi_hot(eval_split["labels"], run.labels), proba, run.labels, "")
    assert classifier.thresholds == pytest.approx(again["values"], abs=1e-5)
    assert metrics["f1_micro"] > 0.7, metrics["f1_micro"]
    assert metrics["baseline"]["name"] == "tfidf-ovr-logreg" and "headline" in metrics["baseline"]["comparison"]
    assert metrics["test"]["n"] == len(run.split("test")) == metrics["baseline"]["test_rows"]
    html = (ml_run / "report.html").read_text(encoding="utf-8")
    assert "Label co-occurrence" in html and "ROC curves (per label)" in html and "chosen on the eval split" in html


def test_predict_returns_every_label_over_its_threshold_with_its_probability(ml_run):
    texts = ["good great awful", "table chair window", "fine nice"]
    result = cli("predict", ml_run, *texts, "--json")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    classifier = MultiLabelClassifier.load(ml_run)
    proba = sigmoid(classifier.logits(texts))
    for prediction, row in zip(predictions, proba):
        over = {label for label, p, t in zip(classifier.labels, row, classifier.thresholds) if p >= t}
        assert {item["label"] for item in prediction["labels"]} == over
        for item in prediction["labels"]:
            assert item["probability"] == pytest.approx(prediction["probabilities"][item["label"]])
        assert [item["probability"] for item in prediction["labels"]] == sorted((item["probability"] for item in prediction["labels"]), reverse=True)
        assert list(prediction["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-6)
    assert "negative" in {item["label"] for item in predictions[0]["labels"]}


def test_predict_file_writes_label_sets(ml_run, tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good great", "awful bad"]}).to_csv(source, index=False)
    result = cli("predict", ml_run, "--file", source, "--out", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == ["text", "labels", "prob_negative", "prob_neutral", "prob_positive"]


def label_names(predictions: list[dict]) -> list[list[str]]:
    return [[item["label"] for item in row["labels"]] for row in predictions]


def test_the_onnx_backend_gives_torchs_label_sets_in_predict_and_eval(ml_run, tmp_path):
    """A multi-label run's exported logits through the same sigmoid and thresholds: gated on the label sets, then used by predict and eval."""
    import shutil

    pytest.importorskip("onnxruntime")
    run = Path(shutil.copytree(ml_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    texts = ["good great awful", "table chair window", "fine nice", "awful bad terrible table"]

    def predicted(backend: str) -> list[dict]:
        result = cli("predict", run, *texts, "--json", "--backend", backend)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    torch, onnx = predicted("torch"), predicted("onnx")
    parity = json.loads((run / "onnx" / "parity.json").read_text(encoding="utf-8"))
    assert parity["compared"] == "label sets after the run's thresholds" and parity["fp32_argmax_agreement"] == 1.0
    assert label_names(onnx) == label_names(torch) and any(label_names(torch))
    for ours, theirs in zip(onnx, torch):
        assert list(ours["probabilities"].values()) == pytest.approx(list(theirs["probabilities"].values()), abs=1e-4)
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    for backend in ("torch", "onnx"):
        assert cli("predict", run, "--file", source, "--out", tmp_path / f"{backend}.csv", "--backend", backend).exit_code == 0
    assert pd.read_csv(tmp_path / "onnx.csv")["labels"].tolist() == pd.read_csv(tmp_path / "torch.csv")["labels"].tolist()

    def evaluated(backend: str) -> dict:
        result = cli("eval", run, "--backend", backend, "--out", tmp_path / f"ev-{backend}", "--json", "--no-baseline")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["test"]

    torch_test, onnx_test = evaluated("torch"), evaluated("onnx")
    assert torch_test["timing"]["backend"] == "torch" and onnx_test["timing"]["backend"] == "onnx"
    for figure in ("subset_accuracy", "hamming_loss", "f1_micro", "f1_macro", "f1_samples"):  # decided by the label sets: the same
        assert onnx_test[figure] == torch_test[figure], figure
    assert onnx_test["loss"] == pytest.approx(torch_test["loss"], abs=1e-4)


def test_a_multi_label_openvino_gate_counts_label_sets_not_the_top_label(ml_run, tmp_path, monkeypatch):
    """OpenVINO logits whose top label is PyTorch's but whose other labels all drop below their thresholds are refused."""
    import shutil

    pytest.importorskip("openvino")
    from tunelab.runtime import openvino_export
    from tunelab.runtime.choice import load_multilabel

    class TopLabelOnly(openvino_export.OpenVinoSession):
        def run(self, outputs, feed):
            (logits,) = super().run(outputs, feed)
            top = logits.argmax(axis=1)
            kept = logits[np.arange(len(logits)), top]
            logits = np.full_like(logits, -20.0)
            logits[np.arange(len(logits)), top] = kept
            return [logits]

    monkeypatch.setattr(openvino_export, "OpenVinoSession", TopLabelOnly)
    run = Path(shutil.copytree(ml_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    assert (Run.open(run).split("test")["labels"].map(len) > 1).any()  # rows with several labels: where the top label is not the set
    with pytest.raises(
        TunelabError, match=r"backend openvino is refused for this run: the OpenVINO model agrees with PyTorch \(label sets after the run's thresholds\) on"
    ):
        load_multilabel(run, "openvino", say=lambda line: None)
    assert json.loads((run / "onnx" / "parity.json").read_text(encoding="utf-8"))["openvino"]["argmax_agreement"] < 0.995


def test_eval_on_the_run_and_on_a_file(ml_run, tmp_path):
    result = cli("eval", ml_run, "--json", "--no-baseline")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["evaluated_on"]["source"] == "test split" and "baseline" not in metrics
    data = tmp_path / "more.csv"
    tags_frame(30, seed=9).assign(tags=lambda f: f["tags"].map(";".join)).to_csv(data, index=False)
    result = cli("eval", ml_run, "--data", data, "--label-col", "tags", "--label-sep", ";", "--out", tmp_path / "ev", "--no-baseline")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test"]["n"] == 30


# -- the CLI's one-line errors -------------------------------------------------------------------


@pytest.fixture
def ml_args(tiny_bert, tmp_path):
    return ["train", "--task", "multi-label", "--model", tiny_bert, "--epochs", "1", "--out", tmp_path / "out"]


def test_a_string_label_without_label_sep_is_refused(ml_args, tmp_path):
    data = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["good", "bad"], "tags": [["a"], "a|b"]}).to_json(data, orient="records", lines=True)
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tags"), "row 2", "is a string, not a list", "--label-sep")
    assert not (tmp_path / "out").exists()


def test_an_empty_label_set_column_is_refused(ml_args, tmp_path):
    data = tmp_path / "d.jsonl"
    pd.DataFrame({"text": ["good", "bad"], "tags": [[], []]}).to_json(data, orient="records", lines=True)
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tags"), "label column 'tags'", "holds no labels")


def test_an_unknown_label_column_is_named(ml_args, tmp_path):
    data = tmp_path / "d.jsonl"
    tags_frame(20).to_json(data, orient="records", lines=True)
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tagz"), "label column 'tagz' not found", "did you mean 'tags'?")


def test_label_sep_without_multi_label_and_a_resume_with_nothing_to_resume_are_refused(ml_args, tiny_bert, sentiment_csv, tmp_path):
    assert_user_error(cli("train", "--model", tiny_bert, "--data", sentiment_csv, "--label-sep", "|"), "--label-sep applies only to --task multi-label")
    data = tmp_path / "tags.jsonl"
    tags_frame(40).to_json(data, orient="records", lines=True)
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tags", "--resume"), "nothing to resume")
    # --nproc trains multi-label runs too (tests/test_distributed_tasks.py); with nothing to resume it says so
    # in one line before starting any process.
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tags", "--resume", "--nproc", "2"), "nothing to resume")


def test_pos_weight_on_another_task_and_an_unknown_pos_weight_are_refused(ml_args, tiny_bert, sentiment_csv, tmp_path):
    assert_user_error(cli("train", "--model", tiny_bert, "--data", sentiment_csv, "--pos-weight", "sqrt"), "--pos-weight applies only to --task multi-label")
    data = tmp_path / "tags.jsonl"
    tags_frame(40).to_json(data, orient="records", lines=True)
    assert_user_error(cli(*ml_args, "--data", data, "--label-col", "tags", "--pos-weight", "balanced"), "pos_weight")
    assert not (tmp_path / "out").exists()


# -- positive weights ------------------------------------------------------------------------------


def test_sqrt_pos_weight_is_the_root_of_negatives_over_positives_clipped_and_one_for_a_label_without_positives():
    from tunelab.training.multilabel import resolve_pos_weight

    targets = np.zeros((200, 4))
    targets[:50, 0] = 1  # 150 / 50
    targets[:1, 1] = 1  # 199 / 1: sqrt 14.1, clipped to 10
    targets[:100, 3] = 1  # 100 / 100; label 2 has no positive row
    assert resolve_pos_weight("none", targets) is None
    assert resolve_pos_weight("sqrt", targets).tolist() == pytest.approx([3**0.5, 10.0, 1.0, 1.0])


def test_the_pos_weighted_training_loss_is_torchs_bce_with_pos_weight_and_evaluation_stays_unweighted(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from tunelab.training.multilabel import SubsetAccuracyTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, problem_type="multi_label_classification")
    weights = torch.tensor([0.5, 4.0, 1.5])
    trainer = SubsetAccuracyTrainer(model=model, args=TrainingArguments(output_dir="unused", report_to="none", use_cpu=True), class_weights=weights)
    batch = dict(tokenizer(["good film", "bad food", "the place", "a day"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, batch["labels"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(torch.nn.BCEWithLogitsLoss()(logits, batch["labels"]).item(), rel=1e-3)
    exact = ((logits > 0) == (batch["labels"] > 0.5)).all(dim=-1)
    assert trainer._window.tolist() == [exact.sum().item(), 4]  # train_accuracy still counts whole label sets
    model.eval()  # the evaluation loss, which picks the best epoch, stays the plain BCE
    with torch.no_grad():
        assert float(trainer.compute_loss(model, dict(batch))) == pytest.approx(float(model(**batch).loss), rel=1e-5)


def test_a_pos_weighted_run_counts_its_weights_on_the_train_split_and_leaves_the_model_unchanged(ml_args, tmp_path):
    from tunelab.training.multilabel import resolve_pos_weight

    data = tmp_path / "tags.jsonl"
    frame = tags_frame(120, seed=3)
    frame.to_json(data, orient="records", lines=True)
    result = cli(*ml_args, "--data", data, "--label-col", "tags", "--pos-weight", "sqrt", "--max-length", 32, "--no-baseline")
    assert result.exit_code == 0, result.output
    run = Run.open(tmp_path / "out")
    assert run.config["pos_weight"] == "sqrt"
    train_weights = resolve_pos_weight("sqrt", multi_hot(run.split("train")["labels"], run.labels)).tolist()
    all_rows = resolve_pos_weight("sqrt", multi_hot(frame["tags"], run.labels)).tolist()
    assert list(run.metrics["pos_weight"].values()) == pytest.approx(train_weights)
    assert train_weights != pytest.approx(all_rows, rel=1e-3)  # eval and test rows would have given other weights
    assert "pos_weight" not in json.loads((run.model_dir / "config.json").read_text())  # inference reads nothing of it


# -- export ---------------------------------------------------------------------------------------


def test_label_set_agreement_counts_whole_label_sets_not_the_top_label():
    from tunelab.models.multilabel import label_set_agreement

    reference = np.array([[3.0, 0.1, -2.0], [2.0, -1.0, -3.0], [-1.0, -1.0, -1.0]])
    moved = np.array([[3.0, -0.1, -2.0], [2.0, -1.0, -3.0], [-1.0, -1.0, -1.0]])  # row 0's second label crosses its threshold; argmax unchanged
    assert label_set_agreement(moved, reference, [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)
    assert label_set_agreement(moved, reference, [0.5, 0.6, 0.5]) == 1.0  # under a higher threshold both sets leave it out


def test_export_checks_the_onnx_label_sets_against_pytorch_on_the_test_split(ml_run, tmp_path):
    import shutil

    from tunelab.models.multilabel import LABEL_SETS_COMPARED, label_set_agreement
    from tunelab.runtime.scorers import OnnxScorer, onnx_session

    run = Path(shutil.copytree(ml_run, tmp_path / "run"))
    result = cli("export", run, "--quantize", "int8")
    assert result.exit_code == 0, result.output
    assert "label sets the same 100.00%" in result.output and f"serve it: tunelab serve {run} --backend onnx-int8" in result.output
    parity = json.loads((run / "onnx" / "parity.json").read_text(encoding="utf-8"))
    assert parity["compared"] == LABEL_SETS_COMPARED and parity["fp32_max_abs_diff"] <= 1e-3
    texts = Run.open(run).split("test")["text"].tolist()
    classifier = MultiLabelClassifier.load(run)
    reference = classifier.logits(texts)
    for name, key in (("model.onnx", "fp32_argmax_agreement"), ("model.int8.onnx", "int8_argmax_agreement")):
        onnx = OnnxScorer(onnx_session(run / "onnx" / name), classifier.classifier.tokenizer, classifier.labels, classifier.classifier.max_length)
        assert parity[key] == pytest.approx(label_set_agreement(onnx.logits(texts), reference, classifier.thresholds)), key
    assert parity["fp32_argmax_agreement"] == 1.0 and parity["int8_argmax_agreement"] >= 0.995 and parity["rows"] == len(texts)


def test_export_openvino_checks_the_label_sets_in_openvino(ml_run, tmp_path):
    import shutil

    from tunelab.models.multilabel import label_set_agreement
    from tunelab.runtime.scorers import OnnxScorer, OpenVinoSession

    pytest.importorskip("openvino")
    run = Path(shutil.copytree(ml_run, tmp_path / "run", ignore=shutil.ignore_patterns("onnx")))
    result = cli("export", run, "--format", "openvino")
    assert result.exit_code == 0, result.output
    assert "label sets the same 100.00% (gate 99.5%)" in result.output and f"serve it: tunelab serve {run} --backend openvino" in result.output
    parity = json.loads((run / "onnx" / "parity.json").read_text(encoding="utf-8"))
    texts = Run.open(run).split("test")["text"].tolist()
    classifier = MultiLabelClassifier.load(run)
    session = OpenVinoSession(run / "onnx" / "model.onnx")
    logits = OnnxScorer(session, classifier.classifier.tokenizer, classifier.labels, classifier.classifier.max_length).logits(texts)
    assert parity["openvino"]["argmax_agreement"] == label_set_agreement(logits, classifier.logits(texts), classifier.thresholds) == 1.0


def test_export_parity_compares_label_sets_not_the_top_label(ml_run, tmp_path, monkeypatch):
    """An ONNX model whose logits all sit 1.5 lower keeps every argmax but loses labels near their thresholds: parity must see it."""
    import shutil

    from tunelab.models.multilabel import label_set_agreement
    from tunelab.runtime import export

    real = export._scorer

    class Lower:
        def __init__(self, path, classifier):
            self.scorer = real(path, classifier)

        def logits(self, texts, batch_size=None):
            return self.scorer.logits(texts, batch_size) - 1.5

    monkeypatch.setattr(export, "_scorer", Lower)
    run = Path(shutil.copytree(ml_run, tmp_path / "run"))
    report = export.export_onnx(run, tolerance=2.0)
    classifier = MultiLabelClassifier.load(run)
    reference = classifier.logits(Run.open(run).split("test")["text"].tolist())
    assert report.fp32_argmax_agreement == pytest.approx(label_set_agreement(reference - 1.5, reference, classifier.thresholds))
    assert report.fp32_argmax_agreement < 1.0


# -- serve ----------------------------------------------------------------------------------------


def test_the_service_answers_with_predicts_label_sets_in_its_documented_schema(ml_run):
    import asyncio

    from tests._serve_fixtures import async_client, running
    from tunelab import predict
    from tunelab.serve.app import create_app
    from tunelab.serve.settings import ServeSettings

    texts = ["good great awful", "table chair window", "fine nice", "awful bad terrible"]
    expected = predict(ml_run, texts)
    assert len({tuple(item["label"] for item in row["labels"]) for row in expected}) > 1  # a mixed-up slice would show

    def same(served: dict, ours: dict) -> None:
        assert [(item["label"], item["threshold"]) for item in served["labels"]] == [(item["label"], item["threshold"]) for item in ours["labels"]]
        assert [item["probability"] for item in served["labels"]] == pytest.approx([item["probability"] for item in ours["labels"]], abs=1e-5)
        assert served["probabilities"] == pytest.approx(ours["probabilities"], abs=1e-5)

    app = create_app(ml_run, ServeSettings(max_batch=64, max_wait_ms=200), api_key="")
    with running(app) as client:
        schema = client.get("/openapi.json").json()
        response = schema["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert response["$ref"].endswith("/LabelSetsResponse")
        assert set(schema["components"]["schemas"]["LabelSetPrediction"]["properties"]) == {"labels", "probabilities"}
        assert set(schema["components"]["schemas"]["ChosenLabel"]["properties"]) == {"label", "probability", "threshold"}
        answer = client.post("/v1/predict", json={"texts": texts})
        assert answer.status_code == 200, answer.text
        for served, ours in zip(answer.json()["predictions"], expected, strict=True):
            same(served, ours)
        assert client.get("/v1/model").json()["labels"] == ["negative", "neutral", "positive"]
        assert client.get("/").status_code == 404  # the web page shows one class per text

    async def concurrently():  # requests sharing one forward pass each get their own texts' label sets
        async with async_client(create_app(ml_run, ServeSettings(max_batch=64, max_wait_ms=200), api_key="")) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json={"texts": [text]}) for text in texts))

    for reply, ours in zip(asyncio.run(concurrently()), expected, strict=True):
        assert reply.status_code == 200, reply.text
        (served,) = reply.json()["predictions"]
        same(served, ours)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"texts": []}, "texts: send at least one text"),
        ({"pairs": [{"text": "a", "text_pair": "b"}]}, "this model classifies single texts"),
        ({"texts": "good"}, "texts: Input should be a valid list"),
    ],
)
def test_a_bad_body_gets_a_one_line_422(ml_run, body, message):
    from tests._serve_fixtures import running
    from tunelab.serve.app import create_app

    with running(create_app(ml_run, api_key="")) as client:
        answer = client.post("/v1/predict", json=body)
    assert answer.status_code == 422 and message in answer.json()["error"] and "\n" not in answer.json()["error"], answer.text


def test_serve_answers_label_sets_on_the_onnx_backend_and_refuses_missing_thresholds(ml_run, tmp_path, monkeypatch):
    import shutil

    import uvicorn

    from tests._serve_fixtures import served_on_backend
    from tunelab.prediction import predict

    pytest.importorskip("onnxruntime")
    texts = ["good great awful", "table chair window"]
    assert label_names(served_on_backend(ml_run, texts, "onnx", monkeypatch)) == label_names(predict(ml_run, texts, backend="torch"))

    def started(*args, **kwargs):
        raise AssertionError("tunelab serve started a server")

    monkeypatch.setattr(uvicorn, "run", started)  # a broken refusal fails here instead of serving forever
    copy = tmp_path / "run"
    shutil.copytree(ml_run, copy)
    (copy / "thresholds.json").unlink()
    assert_user_error(cli("serve", copy), "has no thresholds.json")
    assert_user_error(cli("serve", copy, "--backend", "onnx"), "has no thresholds.json")


# -- data inspect ----------------------------------------------------------------------------------


def test_detects_list_and_delimited_label_columns_and_leaves_single_labels_alone():
    assert detect_label_sets(pd.Series([["a"], ["a", "b"], []])) == {"format": "list"}
    assert detect_label_sets(pd.Series(["a|b", "b", "a|c", "c|b"])) == {"format": "delimited", "separator": "|"}
    assert detect_label_sets(pd.Series(["positive", "negative", "positive"])) is None
    # A comma inside a long single label is not a separator.
    assert detect_label_sets(pd.Series(["arts, culture and the many things people do", "sport", "arts, culture and the many things people do"])) is None


def test_data_inspect_says_a_column_looks_multi_label(tiny_bert, tmp_path, sentiment_csv):
    data = tmp_path / "d.csv"
    tags_frame(40).assign(tags=lambda f: f["tags"].map("|".join)).to_csv(data, index=False)
    result = cli("data", "inspect", data, "--label-col", "tags", "--model", tiny_bert, "--json")
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)
    assert profile["likely_task"] == "multi-label" and profile["multi_label"]["separator"] == "|"
    assert "--task multi-label --label-col tags --label-sep '|'" in profile["warnings"][0]
    single = json.loads(cli("data", "inspect", sentiment_csv, "--model", tiny_bert, "--json").stdout)
    assert single["likely_task"] == "classification" and "multi_label" not in single


@pytest.mark.smoke
def test_factbook_resources_follows_its_derivation_rule():
    from tunelab.data.factbook_resources import MIN_DOCUMENTS, load_factbook_resources

    frame = load_factbook_resources()
    assert len(frame) > 200
    counts = frame["labels"].explode().value_counts()
    assert counts.min() >= MIN_DOCUMENTS and 10 <= len(counts) <= 17
    assert all(labels == sorted(labels) for labels in frame["labels"])


def test_a_runs_config_yaml_trains_a_multi_label_run_again(ml_run, tmp_path):
    result = cli("train", ml_run / "config.yaml", "--epochs", 1, "--out", tmp_path / "again")
    assert result.exit_code == 0, result.output
    again = Run.open(tmp_path / "again")
    assert again.task == "multi-label" and (tmp_path / "again" / "thresholds.json").is_file()
