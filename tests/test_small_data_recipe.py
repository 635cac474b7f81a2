"""Issue 20's recipe options on a tiny model: the mean-pooling head, layer-wise learning-rate decay, early
stopping, and the small-data recipe that `train` picks below the row line and `data inspect` names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import sentiment_frame, write_tiny_bert
from tunelab import config as config_module
from tunelab.config import SMALL_DATA_ROWS, TrainConfig, load_settings, resolve_recipe, to_yaml

# Read at collection, before conftest's session fixture empties it for the other tests.
SHIPPED_RECIPE = dict(config_module.SMALL_DATA_RECIPE)
SMALL_RECIPE = {"pooling": "mean", "epochs": 5.0, "early_stopping": 2, "layer_lr_decay": 0.8}


@pytest.fixture(scope="module")
def mean_pooled_run(tmp_path_factory, tiny_bert):
    """One tiny run with every new option on: mean pooling, layer-wise lr decay, early stopping."""
    from tunelab.training.classify import train

    folder = tmp_path_factory.mktemp("mean-run")
    data = folder / "reviews.csv"
    sentiment_frame(rows_per_class=60).to_csv(data, index=False)
    settings = dict(pooling="mean", layer_lr_decay=0.8, early_stopping=1, epochs=8, lr=1e-3, batch_size=16, seed=1, recipe="default")
    return train(TrainConfig(model=str(tiny_bert), data=str(data), out=str(folder / "run"), **settings), progress=False)


def test_mean_pooled_run_trains_predicts_and_records_its_recipe(mean_pooled_run):
    from tunelab.models.pooling import MeanPooledClassifier
    from tunelab.prediction import predict

    recorded = yaml.safe_load((mean_pooled_run.path / "config.yaml").read_text())
    assert (recorded["recipe"], recorded["pooling"], recorded["layer_lr_decay"]) == ("default", "mean", 0.8)
    assert json.loads((mean_pooled_run.model_dir / "config.json").read_text())["tunelab_pooling"] == "mean"
    eval_lines = [h for h in mean_pooled_run.history() if h["type"] == "eval"]
    best = max(h["eval_accuracy"] for h in eval_lines)
    # Early stopping with patience 1: training ends one evaluation after the last improvement (or at the last epoch).
    last_gain = next(i for i, h in enumerate(eval_lines) if h["eval_accuracy"] == best)
    assert len(eval_lines) == min(8, last_gain + 2)
    assert mean_pooled_run.metrics["accuracy"] > 0.6
    predicted = predict(mean_pooled_run, ["good great wonderful film", "awful bad terrible service"])
    assert [p["label"] for p in predicted] == ["positive", "negative"]
    from tunelab.models.classifier import Classifier

    assert isinstance(Classifier.load(mean_pooled_run.model_dir).model, MeanPooledClassifier)


def test_mean_pooling_reloads_to_the_same_logits_and_ignores_padding(tmp_path, tiny_bert):
    from tunelab.models.pooling import load_sequence_classifier, new_classifier

    model = new_classifier(tiny_bert, "mean", ["a", "b", "c"])
    torch.manual_seed(3)
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a head far from its initialisation
    model.eval()
    model.save_pretrained(tmp_path / "saved")
    reloaded = load_sequence_classifier(tmp_path / "saved").eval()
    batch = {"input_ids": torch.tensor([[2, 10, 11, 12, 3], [2, 14, 3, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    with torch.no_grad():
        before, after = model(**batch).logits, reloaded(**batch).logits
        alone = model(input_ids=torch.tensor([[2, 14, 3]]), attention_mask=torch.tensor([[1, 1, 1]])).logits
    assert torch.allclose(before, after, atol=1e-6)
    # The padded row scores as it does alone: padding is outside the mean.
    assert torch.allclose(before[1], alone[0], atol=1e-5)


def test_mean_pooled_head_exports_to_onnx_with_parity(mean_pooled_run):
    from tunelab.runtime.export import export_onnx

    report = export_onnx(mean_pooled_run, max_rows=20)
    assert report.fp32_max_abs_diff < 1e-3 and report.fp32_argmax_agreement == 1.0


def test_layer_lr_groups_give_each_depth_its_rate(tmp_path):
    from transformers import TrainingArguments

    from tunelab.models.pooling import new_classifier
    from tunelab.training.trainer import AccuracyTrainer

    encoder = write_tiny_bert(tmp_path / "encoder")  # 2 layers
    for pooling in ("cls", "mean"):
        model = new_classifier(encoder, pooling, ["a", "b"])
        args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=1e-3, weight_decay=0.01, use_cpu=True, report_to="none")
        optimizer = AccuracyTrainer(model=model, args=args, layer_lr_decay=0.5).create_optimizer()
        rate = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            expected = 1e-3 if name.startswith(("classifier", "bert.pooler")) else None
            if "embeddings" in name:
                expected = 1e-3 * 0.5**3
            elif ".layer.0." in name:
                expected = 1e-3 * 0.5**2
            elif ".layer.1." in name:
                expected = 1e-3 * 0.5
            assert rate[id(parameter)][0] == pytest.approx(expected), name
            assert rate[id(parameter)][1] == (0.0 if ("bias" in name or "LayerNorm" in name) else 0.01), name
        assert sum(len(group["params"]) for group in optimizer.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_recipe_auto_picks_small_data_below_the_line_only(monkeypatch):
    monkeypatch.setattr(config_module, "SMALL_DATA_RECIPE", SMALL_RECIPE)
    small = resolve_recipe(TrainConfig(), SMALL_DATA_ROWS - 1)
    assert small.recipe == "small-data"
    assert {key: getattr(small, key) for key in SMALL_RECIPE} == SMALL_RECIPE
    large = resolve_recipe(TrainConfig(), SMALL_DATA_ROWS)
    assert large.recipe == "default" and large.pooling == "cls" and large.epochs == 3.0
    # A setting the user gave wins over the recipe's; an explicit recipe wins over the row count.
    given = resolve_recipe(TrainConfig(epochs=2, pooling="cls"), 10)
    assert (given.recipe, given.epochs, given.pooling, given.layer_lr_decay) == ("small-data", 2, "cls", 0.8)
    assert resolve_recipe(TrainConfig(recipe="default"), 10).pooling == "cls"
    assert resolve_recipe(TrainConfig(recipe="small-data"), 10**6).pooling == "mean"


def test_settings_handed_to_worker_processes_leave_the_recipe_free(monkeypatch, tmp_path):
    # --nproc writes the settings for its processes; written-out defaults would count as given.
    monkeypatch.setattr(config_module, "SMALL_DATA_RECIPE", SMALL_RECIPE)
    path = tmp_path / "train.yaml"
    path.write_text(to_yaml(TrainConfig(data="x.csv", out="runs/x"), only_given=True), encoding="utf-8")
    assert resolve_recipe(load_settings(TrainConfig, path), 100).pooling == "mean"


def test_train_uses_the_small_data_recipe_and_inspect_names_it(monkeypatch, tmp_path, tiny_bert):
    from tunelab.inspection import inspect_source
    from tunelab.training.classify import train

    monkeypatch.setattr(config_module, "SMALL_DATA_RECIPE", {**SMALL_RECIPE, "epochs": 2.0})
    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=20).to_csv(data, index=False)
    run = train(TrainConfig(model=str(tiny_bert), data=str(data), lr=1e-3, out=str(tmp_path / "run"), baseline=False), progress=False)
    recorded = yaml.safe_load((run.path / "config.yaml").read_text())
    assert (recorded["recipe"], recorded["pooling"], recorded["epochs"]) == ("small-data", "mean", 2.0)

    profile = inspect_source(str(data), model=None)
    assert profile["recipe"].startswith("small-data (mean pooling, 2 epochs")
    assert "will use the recipe small-data" in profile["warnings"][0]
    large = tmp_path / "large.csv"
    sentiment_frame(rows_per_class=450).to_csv(large, index=False)
    assert inspect_source(str(large), model=None)["recipe"].startswith("default (cls pooling, 3 epochs")


def test_lora_adapters_on_the_mean_pooled_head_merge_into_the_same_logits(tmp_path, tiny_bert):
    from tunelab.models.pooling import load_sequence_classifier, new_classifier
    from tunelab.training.trainer_setup import _with_lora

    model = _with_lora(new_classifier(tiny_bert, "mean", ["a", "b", "c"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = {"input_ids": torch.tensor([[2, 10, 11, 12, 3], [2, 14, 3, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    first = None
    for _ in range(20):
        loss = model(**batch, labels=torch.tensor([0, 2])).loss
        first = first if first is not None else float(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < first / 2  # the adapters and the head learned
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    model.merge_and_unload().save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        reloaded = load_sequence_classifier(tmp_path / "merged").eval()(**batch).logits
    assert torch.allclose(trained, reloaded, atol=1e-5)


def test_an_empty_small_data_recipe_is_refused_by_name(monkeypatch):
    from tunelab.errors import TunelabError

    monkeypatch.setattr(config_module, "SMALL_DATA_RECIPE", {})
    assert resolve_recipe(TrainConfig(), 10).recipe == "default"
    with pytest.raises(TunelabError, match="recipe 'small-data' has no settings"):
        resolve_recipe(TrainConfig(recipe="small-data"), 10)


def test_the_shipped_small_data_recipe_is_the_one_the_benchmark_chose():
    # benchmarks/small_data.py chose it on dev rows; an empty recipe means it chose today's.
    result = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "small_data.json").read_text(encoding="utf-8"))
    expected = {} if result["chosen"] == "today" else result["candidates"][result["chosen"]]
    assert SHIPPED_RECIPE == expected


def test_update_grows_the_head_of_a_mean_pooled_run(mean_pooled_run, tmp_path):
    """`tunelab update` starts from the production model: a mean-pooled one must load as itself, keeping
    its learned head (a plain AutoModelForSequenceClassification would load it with a random head)."""
    from tunelab.lifecycle.continual import grow_head
    from tunelab.models.pooling import MeanPooledClassifier, load_sequence_classifier

    old = load_sequence_classifier(mean_pooled_run.model_dir).eval()
    grown = load_sequence_classifier(grow_head(mean_pooled_run.model_dir, [*mean_pooled_run.labels, "neutral"], tmp_path / "grown")).eval()
    assert isinstance(grown, MeanPooledClassifier)
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        before, after = old(**batch).logits, grown(**batch).logits
    assert torch.allclose(after[:, : before.shape[1]], before, atol=1e-5)


def test_multi_label_training_keeps_the_cls_head_by_default_and_one_recipe():
    from pydantic import ValidationError

    from tunelab.config import MultiLabelConfig

    assert (MultiLabelConfig(data="x.csv").pooling, MultiLabelConfig(data="x.csv").recipe) == ("cls", "default")
    assert MultiLabelConfig(data="x.csv", pooling="mean", head_init="linear-probe").head_init == "linear-probe"  # an option (tests/test_linear_probe.py)
    with pytest.raises(ValidationError):
        MultiLabelConfig(data="x.csv", recipe="small-data")
