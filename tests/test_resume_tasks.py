"""Resuming a killed pair-classification, multi-label, token-classification or extractive-QA run: it continues from
the last complete checkpoint (the one the Trainer is given) and ends where the uninterrupted run ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import sigkill_when, write_tiny_bert
from tests.test_extractive_qa import qa_frame, write_qa_bert
from tests.test_multilabel import tags_frame
from tests.test_pair_classification import pairs_frame
from tests.test_resume_messages import _train_lines
from tests.test_token_classification import tagged_rows, write_jsonl
from tunelab.cli import app
from tunelab.config import ExtractiveQAConfig, MultiLabelConfig, PairClassificationConfig, TokenClassificationConfig, to_yaml
from tunelab.run import Run

EPOCHS, BATCH = 3, 8
# fp32 on one process, a log line per step: the resumed run can match the uninterrupted one exactly.
TRAINING = {"epochs": EPOCHS, "batch_size": BATCH, "precision": "fp32", "logging_steps": 1, "seed": 2}


def kill_and_resume(settings, folder: Path, command: str) -> Run:
    """`tunelab train <settings.yaml>` in a child process (the task read from the file), SIGKILLed in its second
    epoch, then `tunelab resume OUT` (command "resume") or `tunelab train <settings.yaml> --resume` ("train")."""
    path = folder / "train.yaml"
    path.write_text(to_yaml(settings))
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = folder / f".{Path(settings.out).name}.partial" / "history.jsonl"
    sigkill_when(process, lambda: any(1.2 < line["epoch"] < 1.8 for line in _train_lines(history)), 240, "training reached the middle of epoch 2")
    assert not Path(settings.out).exists()
    result = CliRunner().invoke(app, ["resume", settings.out] if command == "resume" else ["train", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    assert f"epoch 1 of {EPOCHS} done" in result.output
    return Run.open(settings.out)


@pytest.fixture
def checkpoints_given(monkeypatch) -> list:
    """The checkpoint each training in this process hands the Trainer (None: from the start)."""
    from tunelab.training import trainer_setup

    given = []
    real = trainer_setup.train_timed

    def spy(trainer, checkpoint=None):
        given.append(checkpoint)
        return real(trainer, checkpoint)

    monkeypatch.setattr(trainer_setup, "train_timed", spy)
    return given


def check_resumed(resumed: Run, reference: Run, checkpoint, figures: tuple[str, ...]) -> None:
    steps_per_epoch = resumed.metrics["train"]["steps"] // EPOCHS
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{steps_per_epoch}"  # epoch 1's, the last complete one
    for figure in figures:  # fp32 on one process: the resumed run ends exactly where the uninterrupted one does
        assert resumed.metrics[figure] == pytest.approx(reference.metrics[figure], abs=1e-6), figure
    steps = [h["step"] for h in resumed.history() if h["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == resumed.metrics["train"]["steps"]


def test_a_killed_token_classification_run_resumes_from_its_checkpoint(tmp_path, checkpoints_given):
    from tunelab.training.token_classification import train_token_classifier

    model = write_tiny_bert(tmp_path / "piece-bert", pieces=True)
    data = write_jsonl(tmp_path / "ner.jsonl", tagged_rows(rows=160))

    def settings(out: Path) -> TokenClassificationConfig:
        return TokenClassificationConfig(model=str(model), data=str(data), lr=3e-3, out=str(out), **TRAINING)

    resumed = kill_and_resume(settings(tmp_path / "killed"), tmp_path, "resume")
    reference = train_token_classifier(settings(tmp_path / "whole"), progress=False)
    assert checkpoints_given[1] is None  # the reference trained from the start
    check_resumed(resumed, reference, checkpoints_given[0], ("f1_micro", "f1_macro", "word_accuracy"))


def test_a_killed_pair_classification_run_resumes_from_its_checkpoint(tmp_path, checkpoints_given):
    from tunelab.training.classify import train

    model = write_tiny_bert(tmp_path / "tiny-bert")
    data = tmp_path / "nli.csv"
    pairs_frame(rows=160).to_csv(data, index=False)

    def settings(out: Path) -> PairClassificationConfig:
        return PairClassificationConfig(
            model=str(model), data=str(data), text_col="premise", text_pair_col="hypothesis", lr=1e-3, recipe="default", out=str(out), **TRAINING
        )

    resumed = kill_and_resume(settings(tmp_path / "killed"), tmp_path, "train")
    reference = train(settings(tmp_path / "whole"), progress=False)
    assert resumed.is_pair_classifier
    check_resumed(resumed, reference, checkpoints_given[0], ("accuracy", "f1_macro", "loss"))


def test_a_killed_multi_label_run_resumes_from_its_checkpoint(tmp_path, checkpoints_given):
    from tunelab.training.multilabel import train_multilabel

    model = write_tiny_bert(tmp_path / "tiny-bert")
    data = tmp_path / "tags.jsonl"
    tags_frame(rows=160).to_json(data, orient="records", lines=True)

    def settings(out: Path) -> MultiLabelConfig:
        return MultiLabelConfig(model=str(model), data=str(data), label_col="tags", lr=1e-3, out=str(out), **TRAINING)

    resumed = kill_and_resume(settings(tmp_path / "killed"), tmp_path, "resume")
    reference = train_multilabel(settings(tmp_path / "whole"), progress=False)
    check_resumed(resumed, reference, checkpoints_given[0], ("f1_micro", "f1_macro", "subset_accuracy", "loss"))
    assert resumed.metrics["thresholds"] == reference.metrics["thresholds"]  # chosen on eval after training, as in one go


def test_a_killed_extractive_qa_run_resumes_from_its_checkpoint(tmp_path, checkpoints_given):
    from tunelab.training.extractive_qa import train_extractive_qa

    model = write_qa_bert(tmp_path / "qa-bert")
    data = tmp_path / "qa.jsonl"
    qa_frame(rows=160).to_json(data, orient="records", lines=True)

    def settings(out: Path) -> ExtractiveQAConfig:
        return ExtractiveQAConfig(model=str(model), data=str(data), lr=3e-3, out=str(out), **TRAINING)

    resumed = kill_and_resume(settings(tmp_path / "killed"), tmp_path, "resume")
    reference = train_extractive_qa(settings(tmp_path / "whole"), progress=False)
    check_resumed(resumed, reference, checkpoints_given[0], ())
    # The reader's threshold is chosen on eval and the test split scored after training, as in one go.
    assert resumed.metrics["null_threshold"]["value"] == pytest.approx(reference.metrics["null_threshold"]["value"], abs=1e-6)
    assert resumed.metrics["test"] == reference.metrics["test"]
