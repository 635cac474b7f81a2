"""Bad input: one line saying what is wrong and how to fix it, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.conftest import sentiment_frame
from tunelab.cli import app

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit code 2 and, of everything printed, exactly one line: `error: <what is wrong> — <how to fix it>`
    on stderr. No traceback, no usage screen, no progress lines around it."""
    output = result.output  # stdout and stderr interleaved, as the user sees them
    assert result.exit_code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"a user error must be one line, got {len(lines)}:\n{output}"
    line = lines[0]
    assert result.stderr.strip() == line.strip(), f"the error line belongs on stderr:\n{output}"
    assert line.startswith("error: ") and " — " in line, f"not 'error: <what> — <how to fix it>': {line}"
    for fragment in fragments:
        assert fragment in line, (fragment, line)


@pytest.fixture
def train_args(tiny_bert, tmp_path):
    return ["train", "--model", tiny_bert, "--epochs", "1", "--out", tmp_path / "out"]


def test_missing_file(train_args, tmp_path):
    assert_user_error(run_cli(*train_args, "--data", tmp_path / "nope.csv"), "neither a file nor a built-in dataset")
    assert not (tmp_path / "out").exists()


def test_unreadable_encoding(train_args, tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9 good,a\nbad,b\n".encode("latin-1"))
    assert_user_error(run_cli(*train_args, "--data", path), "not readable as utf-8", "--encoding latin-1")


def test_unknown_column_names_the_nearest(train_args, sentiment_csv, tmp_path):
    result = run_cli(*train_args, "--data", sentiment_csv, "--label-col", "lable")
    assert_user_error(result, "label column 'lable' not found", "columns are: text, label", "did you mean 'label'?")
    assert not (tmp_path / "out").exists()


def test_empty_texts_dropped_or_refused_with_strict(tiny_bert, tmp_path):
    frame = sentiment_frame(20)
    frame.loc[[0, 1, 2], "text"] = ["", "   ", None]
    frame.to_csv(tmp_path / "d.csv", index=False)
    from tunelab.data import load_source

    loaded = load_source(tmp_path / "d.csv")
    assert loaded.attrs["dropped"]["empty_text"] == 3 and len(loaded) == 57
    result = run_cli("train", "--model", tiny_bert, "--data", tmp_path / "d.csv", "--strict", "--out", tmp_path / "out")
    assert_user_error(result, "3 rows with an empty or missing text", "drop --strict")
    assert not (tmp_path / "out").exists()


def test_single_class(train_args, tmp_path):
    sentiment_frame(20, classes=("positive",)).to_csv(tmp_path / "one.csv", index=False)
    assert_user_error(run_cli(*train_args, "--data", tmp_path / "one.csv"), "single class ('positive')")


def test_eval_labels_unseen_in_training(train_args, tmp_path):
    sentiment_frame(20, classes=("positive", "negative")).to_csv(tmp_path / "train.csv", index=False)
    sentiment_frame(5).to_csv(tmp_path / "eval.csv", index=False)
    result = run_cli(*train_args, "--data", tmp_path / "train.csv", "--eval-data", tmp_path / "eval.csv")
    assert_user_error(result, "eval labels not in the training data: 'neutral'")


def test_zero_rows(train_args, tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    assert_user_error(run_cli(*train_args, "--data", tmp_path / "empty.csv"), "no usable rows")


def test_existing_run_is_refused_without_overwrite(train_args, sentiment_csv, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_user_error(run_cli(*train_args, "--data", sentiment_csv), "already holds a run", "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"


def test_unknown_model_lists_available(sentiment_csv, tmp_path):
    result = run_cli("train", "--model", "minilmm", "--data", sentiment_csv, "--out", tmp_path / "o")
    assert_user_error(result, "unknown model 'minilmm'; available: minilm", "did you mean 'minilm'?")


def test_bad_config_file_setting(tmp_path):
    (tmp_path / "c.yaml").write_text("epocs: 2\n")
    assert_user_error(run_cli("train", tmp_path / "c.yaml"), "unknown setting 'epocs'", "did you mean 'epochs'?")
    (tmp_path / "c.yaml").write_text("epochs: -1\n")
    assert_user_error(run_cli("train", tmp_path / "c.yaml"), "setting 'epochs'")


def test_predict_on_a_folder_that_is_not_a_run(tmp_path):
    assert_user_error(run_cli("predict", tmp_path, "hello"), "not a tunelab run directory")


def test_a_scikit_learn_baseline_run_is_refused_in_one_line_on_every_backend(tmp_path):
    """A baseline candidate has no Hugging Face model to run or export: predict says so before any first-use export."""
    import yaml

    run = tmp_path / "baseline"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"kind": "sklearn", "method": "tfidf-logreg"}), encoding="utf-8")
    (run / "labels.json").write_text('{"0": "negative", "1": "positive"}', encoding="utf-8")
    (run / "model.joblib").write_bytes(b"")
    for backend in ("torch", "onnx", "openvino", "auto"):
        assert_user_error(run_cli("predict", run, "good film", "--backend", backend), "is a scikit-learn baseline (tfidf-logreg)")
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml", "labels.json", "model.joblib"]  # no onnx/ folder


def test_subprocess_prints_one_line_on_stderr(tmp_path):
    """The installed console path, not just the in-process runner."""
    result = subprocess.run(
        [sys.executable, "-c", "from tunelab.cli import main; main()", "data", "inspect", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "missing.csv" in result.stderr and "Traceback" not in result.stderr


def test_yaml_config_with_flag_override(tiny_bert, sentiment_csv, tmp_path):
    (tmp_path / "c.yaml").write_text(f"model: {tiny_bert}\ndata: {sentiment_csv}\nepochs: 3\nlr: 0.003\nseed: 7\n")
    result = run_cli("train", tmp_path / "c.yaml", "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    import yaml

    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["epochs"], config["lr"], config["seed"]) == (1.0, 0.003, 7)


@pytest.mark.smoke  # the real minilm (its tokenizer)
def test_data_commands(sentiment_csv):
    listed = run_cli("data", "list")
    assert listed.exit_code == 0 and "bbc-news" in listed.output and "tweets" in listed.output
    inspected = run_cli("data", "inspect", sentiment_csv, "--model", "minilm", "--json")
    assert inspected.exit_code == 0, inspected.output
    import json

    profile = json.loads(inspected.output)
    assert profile["rows"] == 120 and profile["class_counts"] == {"positive": 40, "negative": 40, "neutral": 40}
    assert profile["token_length"]["p95"] > 3


def test_models_lists_minilm():
    result = run_cli("models")
    assert result.exit_code == 0 and "minilm" in result.output


def test_report_to_an_integration_that_is_not_installed(train_args, sentiment_csv):
    from transformers.integrations import get_available_reporting_integrations

    if "dvclive" in get_available_reporting_integrations():
        pytest.skip("dvclive is installed here")
    assert_user_error(run_cli(*train_args, "--data", sentiment_csv, "--report-to", "dvclive"), "pip install dvclive")
    assert_user_error(run_cli(*train_args, "--data", sentiment_csv, "--report-to", "tensorbored"), "unknown --report-to")
