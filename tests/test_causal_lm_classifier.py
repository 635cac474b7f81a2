"""A GPT-style causal LM fine-tuned as a multi-label (and single-label) classifier: a tiny random Llama shipped as Llama and GPT-2 are,
without a pad token, trained through the CLI with the last-token head (`pooling: cls`) and with LP-FT (`pooling: mean`,
`head_init: linear-probe`), then loaded, used to predict and exported to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._lm_fixtures import write_tiny_llama
from tests.test_cli_errors import assert_user_error
from tests.test_multilabel import tags_frame
from tunelab.cli import app
from tunelab.models.classifier import Classifier
from tunelab.run import Run

runner = CliRunner()
# Texts of very different lengths: in one batch the short ones are padded, so a head that read a pad token would differ.
TEXTS = ["good", "table chair window door paper street river", "awful bad terrible table good great fine nice lovely happy"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def without_pad_token(folder: Path) -> Path:
    """The tokenizer and config of a causal LM as Llama and GPT-2 ship them: an end-of-text token, no pad token."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.pop("pad_token_id", None)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    folder = without_pad_token(write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", chat_template=None))
    from transformers import AutoConfig, AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).pad_token is None and AutoConfig.from_pretrained(folder).pad_token_id is None
    return folder


@pytest.fixture(scope="module")
def tags_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tags") / "tags.jsonl"
    tags_frame(rows=120).to_json(path, orient="records", lines=True)
    return path


def train_run(model: Path, data: Path, out: Path, *options) -> Path:
    result = cli("train", "--task", "multi-label", "--model", model, "--data", data, "--label-col", "tags", "--epochs", 2, "--lr", 1e-3, "--out", out, *options)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def last_token_run(tiny_causal_lm, tags_data, tmp_path_factory) -> Path:
    return train_run(tiny_causal_lm, tags_data, tmp_path_factory.mktemp("last-token") / "run")


def alone_and_batched(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Each text's logits scored alone (no padding) and all of them in one padded batch."""
    classifier = Classifier.load(Run.open(run).model_dir)
    alone = np.concatenate([classifier.logits([text]) for text in TEXTS])
    return alone, classifier.logits(TEXTS, batch_size=len(TEXTS))


def test_a_causal_lm_without_a_pad_token_trains_a_last_token_head_that_reads_each_rows_last_real_token(last_token_run, tiny_causal_lm):
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(tiny_causal_lm).eos_token
    saved = Run.open(last_token_run)
    config = json.loads((saved.model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["problem_type"] == "multi_label_classification"
    tokenizer = AutoTokenizer.from_pretrained(saved.model_dir)
    assert tokenizer.pad_token == eos and config["pad_token_id"] == tokenizer.pad_token_id  # the model pads as its tokenizer does
    alone, batched = alone_and_batched(last_token_run)
    np.testing.assert_allclose(batched, alone, atol=1e-4)  # padding a row to its neighbours' length changes nothing
    assert len({tuple(row.round(4)) for row in alone}) == len(TEXTS)  # and the head does read the text
    predicted = cli("predict", last_token_run, *TEXTS, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout)) == len(TEXTS)


def test_a_last_token_runs_onnx_export_gives_pytorchs_logits_on_padded_batches(last_token_run, tmp_path):
    import shutil

    pytest.importorskip("onnxruntime")
    from tunelab.runtime.scorers import OnnxScorer, onnx_session

    run = Path(shutil.copytree(last_token_run, tmp_path / "run"))
    result = cli("export", run)
    assert result.exit_code == 0, result.output
    assert "label sets the same 100.00%" in result.output
    classifier = Classifier.load(Run.open(run).model_dir)
    onnx = OnnxScorer(onnx_session(run / "onnx" / "model.onnx"), classifier.tokenizer, classifier.labels, classifier.max_length)
    alone, _ = alone_and_batched(run)
    np.testing.assert_allclose(onnx.logits(TEXTS, batch_size=len(TEXTS)), alone, atol=1e-4)


def test_a_causal_lm_trains_with_mean_pooling_and_a_probe_started_head(tiny_causal_lm, tags_data, tmp_path):
    run = train_run(tiny_causal_lm, tags_data, tmp_path / "run", "--pooling", "mean", "--head-init", "linear-probe")
    metrics = Run.open(run).metrics
    assert "head_probe" in metrics["train"]
    assert json.loads((Run.open(run).model_dir / "config.json").read_text(encoding="utf-8"))["tunelab_pooling"] == "mean"
    alone, batched = alone_and_batched(run)
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    assert len({tuple(row.round(4)) for row in alone}) == len(TEXTS)


def test_a_causal_lm_trains_a_single_label_last_token_head(tiny_causal_lm, tmp_path):
    from tests.conftest import sentiment_frame

    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=20).to_csv(data, index=False)
    result = cli("train", "--model", tiny_causal_lm, "--data", data, "--recipe", "default", "--epochs", 1, "--lr", 1e-3, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    config = json.loads((Run.open(tmp_path / "run").model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["problem_type"] == "single_label_classification"
    alone, batched = alone_and_batched(tmp_path / "run")
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_a_tokenizer_with_neither_a_pad_nor_an_end_of_text_token_is_refused_in_one_line(tiny_causal_lm, tags_data, tmp_path):
    import shutil

    folder = Path(shutil.copytree(tiny_causal_lm, tmp_path / "model"))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer.pop("eos_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    result = cli("train", "--task", "multi-label", "--model", folder, "--data", tags_data, "--label-col", "tags", "--epochs", 1, "--out", tmp_path / "out")
    assert_user_error(result, "neither a pad token nor an end-of-text token")
    assert not (tmp_path / "out").exists()
