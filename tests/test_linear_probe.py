"""head_init linear-probe (LP-FT) on a tiny model: the mean-pooled head starts as the logistic regression fitted on
what it reads, the setting needs mean pooling, and a run records the probe it started from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoTokenizer

from tests.conftest import sentiment_frame
from tunelab import config as config_module
from tunelab.config import MultiLabelConfig, TrainConfig, load_settings, resolve_recipe
from tunelab.errors import TunelabError
from tunelab.models.linear import LinearSettings, fit_logreg
from tunelab.models.pooling import new_classifier
from tunelab.training.classify import tokenize_splits
from tunelab.training.linear_probe import init_head_from_probe, pooled_features


def probed(tiny_bert, classes: tuple[str, ...]):
    """A fresh mean-pooled classifier whose head was set by the probe, its tokenized splits and the probe's facts."""
    labels = sorted(classes)
    splits = {"train": sentiment_frame(rows_per_class=20, seed=1, classes=classes), "eval": sentiment_frame(rows_per_class=8, seed=2, classes=classes)}
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    datasets = tokenize_splits(splits, tokenizer, 32, labels)
    model = new_classifier(tiny_bert, "mean", labels)
    facts = init_head_from_probe(model, datasets, tokenizer, seed=0)
    return model, datasets, tokenizer, facts


def test_the_head_is_the_fitted_logistic_regression(tiny_bert):
    model, datasets, tokenizer, facts = probed(tiny_bert, ("positive", "negative", "neutral"))
    features = {name: pooled_features(model, datasets[name], tokenizer) for name in ("train", "eval")}
    y = {name: np.asarray(datasets[name]["labels"]) for name in ("train", "eval")}
    pipeline, c, _, _ = fit_logreg(LinearSettings(method="embeddings-logreg", seed=0), features, y, 3)
    assert facts["C"] == c
    np.testing.assert_allclose(model.classifier.weight.detach().numpy(), pipeline[-1].coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.classifier.bias.detach().numpy(), pipeline[-1].intercept_, rtol=1e-5, atol=1e-6)
    assert model.training  # the features were computed in eval mode; the model goes back to how it was


def test_a_binary_head_gives_the_regressions_probabilities(tiny_bert):
    model, datasets, tokenizer, _ = probed(tiny_bert, ("positive", "negative"))
    features = {name: pooled_features(model, datasets[name], tokenizer) for name in ("train", "eval")}
    y = {name: np.asarray(datasets[name]["labels"]) for name in ("train", "eval")}
    pipeline, _, _, _ = fit_logreg(LinearSettings(method="embeddings-logreg", seed=0), features, y, 2)
    model.eval()
    rows = datasets["eval"].select_columns(["input_ids", "attention_mask", "token_type_ids"])
    with torch.no_grad():
        logits = torch.cat([model(**{key: torch.tensor([row[key]]) for key in row}).logits for row in rows])
    np.testing.assert_allclose(torch.softmax(logits, dim=1).numpy(), pipeline.predict_proba(features["eval"]), atol=1e-5)


def test_linear_probe_needs_mean_pooling(tmp_path):
    assert TrainConfig(pooling="mean", head_init="linear-probe").head_init == "linear-probe"
    path = tmp_path / "train.yaml"
    path.write_text("data: x.csv\nhead_init: linear-probe\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="setting 'head_init': head_init 'linear-probe' needs pooling 'mean'"):
        load_settings(TrainConfig, path)
    with pytest.raises(TunelabError, match="needs pooling 'mean'"):
        load_settings(MultiLabelConfig, path)  # multi-label too: its pooling is cls unless --pooling mean is given
    with pytest.raises(TunelabError, match="'random' or 'linear-probe'"):
        load_settings(TrainConfig, None, {"data": "x.csv", "head_init": "probe"})


def test_a_recipe_with_the_probe_leaves_it_out_when_the_user_keeps_the_cls_head(monkeypatch):
    monkeypatch.setattr(config_module, "SMALL_DATA_RECIPE", {"pooling": "mean", "head_init": "linear-probe"})
    assert (resolve_recipe(TrainConfig(), 10).pooling, resolve_recipe(TrainConfig(), 10).head_init) == ("mean", "linear-probe")
    assert (resolve_recipe(TrainConfig(pooling="cls"), 10).pooling, resolve_recipe(TrainConfig(pooling="cls"), 10).head_init) == ("cls", "random")
    assert resolve_recipe(TrainConfig(pooling="mean", head_init="random"), 10).head_init == "random"  # given, so kept


def test_a_run_starts_from_the_probe_and_records_it(tmp_path, tiny_bert):
    from tunelab.training.classify import train

    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=20).to_csv(data, index=False)
    settings = dict(pooling="mean", head_init="linear-probe", epochs=1, lr=1e-3, seed=1, recipe="default", baseline=False)
    run = train(TrainConfig(model=str(tiny_bert), data=str(data), out=str(tmp_path / "run"), **settings), progress=False)
    assert yaml.safe_load((run.path / "config.yaml").read_text())["head_init"] == "linear-probe"
    probe = run.metrics["train"]["head_probe"]
    assert probe["C"] in (0.1, 1.0, 10.0, 100.0) and 0 <= probe["eval_accuracy"] <= 1


# -- multi-label: a sigmoid per label, the head started from a one-vs-rest probe ------------------------


def multilabel_probed(tiny_bert, tmp_path):
    """A mean-pooled multi-label head set by the probe; the label `always` is on every train row (one class only)."""
    from tests.test_multilabel import tags_frame
    from tunelab.training.multilabel import tokenize_multilabel

    splits = {"train": tags_frame(60, seed=1), "eval": tags_frame(30, seed=2)}
    splits["train"]["labels"] = [[*tags, "always"] for tags in splits["train"].pop("tags")]
    splits["eval"]["labels"] = [[*tags, "always"] if i % 2 else tags for i, tags in enumerate(splits["eval"].pop("tags"))]
    labels = ["always", "negative", "neutral", "positive"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    datasets = {name: tokenize_multilabel(split, tokenizer, 32, labels) for name, split in splits.items()}
    model = new_classifier(tiny_bert, "mean", labels)
    model.config.problem_type = "multi_label_classification"
    facts = init_head_from_probe(model, datasets, tokenizer, seed=0)
    return model, datasets, tokenizer, labels, facts


def test_a_multi_label_head_is_the_one_vs_rest_probe_and_a_one_class_label_gets_a_bias_only(tiny_bert, tmp_path):
    from tunelab.models.linear import fit_ovr

    model, datasets, tokenizer, labels, facts = multilabel_probed(tiny_bert, tmp_path)
    features = {name: pooled_features(model, datasets[name], tokenizer) for name in ("train", "eval")}
    y = {name: np.asarray(datasets[name]["labels"]).astype(int) for name in ("train", "eval")}
    pipeline, c, _, f1 = fit_ovr(LinearSettings(method="embeddings-logreg", seed=0), features, y, labels)
    assert facts == {"C": c, "eval_f1_micro": round(f1, 4)}
    weight, bias = model.classifier.weight.detach().numpy(), model.classifier.bias.detach().numpy()
    for i in (1, 2, 3):  # each label's regression is its row: the head's logit is the regression's decision value
        np.testing.assert_allclose(weight[i], pipeline[-1].estimators_[i].coef_[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bias[i], pipeline[-1].estimators_[i].intercept_[0], rtol=1e-5, atol=1e-6)
    rows = len(y["train"])  # `always`: all 1 in train, no regression; zero row, log-odds of (rows + 1) / (rows + 2)
    assert not weight[0].any() and bias[0] == pytest.approx(np.log(rows + 1), rel=1e-5)


def test_the_mean_pooled_head_loss_follows_problem_type(tiny_bert):
    model = new_classifier(tiny_bert, "mean", ["a", "b", "c"])
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    model.eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    model.config.problem_type = "multi_label_classification"
    out = model(**inputs, labels=targets)
    assert out.loss.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets).item(), rel=1e-6)
    model.config.problem_type = None
    out = model(**inputs, labels=torch.tensor([0, 2]))
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])).item(), rel=1e-6)


def test_a_multi_label_lpft_run_trains_predicts_evaluates_and_exports(tiny_bert, tmp_path):
    import json

    from tests.test_multilabel import cli, tags_frame
    from tunelab.models.multilabel import MultiLabelClassifier
    from tunelab.run import Run

    data = tmp_path / "tags.jsonl"
    tags_frame(120).to_json(data, orient="records", lines=True)
    run_dir = tmp_path / "run"
    result = cli(
        "train", "--task", "multi-label", "--model", tiny_bert, "--data", data, "--label-col", "tags", "--pooling", "mean", "--head-init", "linear-probe",
        "--epochs", 2, "--lr", 1e-3, "--seed", 1, "--no-baseline", "--out", run_dir,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = Run.open(run_dir)
    model_config = json.loads((run_dir / "model" / "config.json").read_text(encoding="utf-8"))
    assert model_config["tunelab_pooling"] == "mean" and model_config["problem_type"] == "multi_label_classification"
    assert run.config["head_init"] == "linear-probe" and run.metrics["train"]["head_probe"]["C"] in (0.1, 1.0, 10.0, 100.0)
    assert 0 <= run.metrics["test"]["f1_micro"] <= 1
    predicted = cli("predict", run_dir, "good great awful", "--json")
    assert predicted.exit_code == 0, predicted.output
    assert set(json.loads(predicted.stdout)[0]["probabilities"]) == set(MultiLabelClassifier.load(run).labels)
    assert cli("eval", run_dir).exit_code == 0
    exported = cli("export", run_dir)
    assert exported.exit_code == 0, exported.output
    parity = json.loads((run_dir / "onnx" / "parity.json").read_text(encoding="utf-8"))
    assert parity["fp32_argmax_agreement"] == 1.0 and parity["fp32_max_abs_diff"] <= 1e-3


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (("--head-init", "linear-probe"), "needs pooling 'mean'"),
        (("--pooling", "cls", "--head-init", "linear-probe"), "needs pooling 'mean'"),
        (("--recipe", "small-data"), "setting 'recipe'"),
    ],
)
def test_multi_label_refuses_a_probe_without_mean_pooling_and_the_small_data_recipe_in_one_line(tiny_bert, tmp_path, flags, fragment):
    from tests.test_cli_errors import assert_user_error
    from tests.test_multilabel import cli, tags_frame

    data = tmp_path / "tags.jsonl"
    tags_frame(40).to_json(data, orient="records", lines=True)
    result = cli("train", "--task", "multi-label", "--model", tiny_bert, "--data", data, "--label-col", "tags", *flags, "--out", tmp_path / "out")
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()
