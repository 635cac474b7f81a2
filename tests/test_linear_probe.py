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
        load_settings(MultiLabelConfig, path)  # multi-label keeps the [CLS] head
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
