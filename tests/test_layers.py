"""`layers: N` (`tunelab train --layers N`): the pretrained model's first N transformer layers, fine-tuned and served as any run."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import sentiment_frame, write_tiny_bert
from tests.test_cli_errors import assert_user_error, run_cli


def bert_layer_state(model, index: int) -> dict[str, torch.Tensor]:
    """Encoder layer `index`'s weights, by their names inside the layer, whichever head or wrapper holds the encoder."""
    marker = f"encoder.layer.{index}."
    return {name.split(marker, 1)[1]: value for name, value in model.state_dict().items() if marker in name}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_both_heads_keep_the_first_layers_with_their_pretrained_weights(tiny_bert, pooling):
    from transformers import AutoModel

    from tunelab.config import TrainConfig
    from tunelab.training.trainer_setup import build_classifier

    pretrained = AutoModel.from_pretrained(tiny_bert)
    config = TrainConfig(model=str(tiny_bert), pooling=pooling, layers=1)
    model = build_classifier(tiny_bert, config, ["a", "b"])
    assert model.config.num_hidden_layers == 1
    assert bert_layer_state(model, 0) and not bert_layer_state(model, 1)
    kept, original = bert_layer_state(model, 0), bert_layer_state(pretrained, 0)
    assert kept.keys() == original.keys()
    for name in kept:
        assert torch.equal(kept[name], original[name]), name
    # The head on top reads layer 0's output, so the truncated model is the pretrained one cut after that layer.
    assert build_classifier(tiny_bert, TrainConfig(model=str(tiny_bert), pooling=pooling), ["a", "b"]).config.num_hidden_layers == 2


def test_a_one_layer_run_of_a_two_layer_model_predicts_and_exports_like_any_run(tiny_bert, tmp_path):
    import tunelab
    from tunelab.config import TrainConfig
    from tunelab.run import Run
    from tunelab.runtime.export import export_onnx
    from tunelab.training.classify import train

    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=20).to_csv(data, index=False)
    run = train(TrainConfig(model=str(tiny_bert), data=str(data), epochs=1, lr=1e-3, layers=1, out=str(tmp_path / "run")), progress=False)

    saved = json.loads((run.model_dir / "config.json").read_text(encoding="utf-8"))
    assert saved["num_hidden_layers"] == 1
    assert Run.open(run.path).config["layers"] == 1  # recorded with the other settings in config.yaml
    assert "<td>layers</td><td>1</td>" in (run.path / "report.html").read_text(encoding="utf-8")
    predicted = tunelab.predict(run.path, ["a good great film", "an awful dull place"])
    assert len(predicted) == 2 and all(row["label"] in run.labels for row in predicted)
    report = export_onnx(run, None)
    assert report.fp32_argmax_agreement == 1.0 and report.fp32_max_abs_diff < 1e-3


@pytest.mark.parametrize("layers", [0, 3])
def test_layers_outside_the_models_range_are_refused_in_one_line_naming_its_layer_count(tiny_bert, sentiment_csv, tmp_path, layers):
    result = run_cli("train", "--model", tiny_bert, "--data", sentiment_csv, "--epochs", "1", "--layers", layers, "--out", tmp_path / "out")
    assert_user_error(result, f"--layers {layers} is out of range", "has 2 transformer layers", "use 1 to 2")
    assert not (tmp_path / "out").exists()


class Built(Exception):
    """Raised in place of the Trainer: the model a training function built, caught before it trains."""

    def __init__(self, model):
        self.model = model


@pytest.mark.parametrize("task", ["token-classification", "extractive-qa"])
def test_the_token_and_span_tasks_build_their_model_with_the_kept_layers(tmp_path, monkeypatch, task):
    from tests.test_extractive_qa import qa_frame, write_qa_bert
    from tests.test_token_classification import tagged_rows, write_jsonl
    from tunelab.config import ExtractiveQAConfig, TokenClassificationConfig
    from tunelab.training import trainer_setup
    from tunelab.training.extractive_qa import train_extractive_qa
    from tunelab.training.token_classification import train_token_classifier

    def build_trainer(trainer_class, config, setup, args, model, *rest, **extra):
        raise Built(model)

    monkeypatch.setattr(trainer_setup, "build_trainer", build_trainer)
    model_dir = write_qa_bert(tmp_path / "bert") if task == "extractive-qa" else write_tiny_bert(tmp_path / "bert", pieces=True)
    if task == "extractive-qa":
        data = tmp_path / "qa.jsonl"
        qa_frame(60).to_json(data, orient="records", lines=True)
        trainer, config = train_extractive_qa, ExtractiveQAConfig(model=str(model_dir), data=str(data), layers=1, out=str(tmp_path / "run"))
    else:
        data = write_jsonl(tmp_path / "ner.jsonl", tagged_rows(60))
        trainer, config = train_token_classifier, TokenClassificationConfig(model=str(model_dir), data=str(data), layers=1, out=str(tmp_path / "run"))
    with pytest.raises(Built) as built:
        trainer(config, progress=False)
    assert built.value.model.config.num_hidden_layers == 1
    assert bert_layer_state(built.value.model, 0) and not bert_layer_state(built.value.model, 1)
