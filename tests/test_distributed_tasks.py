"""`tunelab train --nproc 2` for every task beyond single-label classification: two gloo processes train
their shards through the one launcher, and the main one writes the run directory a one-process run writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import write_tiny_bert
from tests.test_extractive_qa import qa_frame, write_qa_bert
from tests.test_multilabel import tags_frame
from tests.test_pair_classification import pairs_frame
from tests.test_token_classification import tagged_rows, write_jsonl
from tunelab.cli import app
from tunelab.run import Run

EPOCHS = 2


def multi_label(folder: Path) -> list:
    data = folder / "tags.jsonl"
    tags_frame(rows=60).to_json(data, orient="records", lines=True)
    return ["--model", write_tiny_bert(folder / "bert"), "--data", data, "--label-col", "tags"]


def token_classification(folder: Path) -> list:
    return ["--model", write_tiny_bert(folder / "bert", pieces=True), "--data", write_jsonl(folder / "ner.jsonl", tagged_rows(rows=60))]


def pair_classification(folder: Path) -> list:
    data = folder / "nli.csv"
    pairs_frame(rows=60).to_csv(data, index=False)
    # The default recipe, as the one-process run in this test process gets (conftest.default_recipe_at_every_size), which torchrun's processes do not see.
    return ["--model", write_tiny_bert(folder / "bert"), "--data", data, "--text-col", "premise", "--text-pair-col", "hypothesis", "--recipe", "default"]


def extractive_qa(folder: Path) -> list:
    data = folder / "qa.jsonl"
    qa_frame(rows=60).to_json(data, orient="records", lines=True)
    return ["--model", write_qa_bert(folder / "bert"), "--data", data]


TASKS = {"multi-label": multi_label, "token-classification": token_classification, "pair-classification": pair_classification, "extractive-qa": extractive_qa}


def train(task: str, arguments: list, out: Path, *extra) -> Run:
    command = ["train", "--task", task, *arguments, "--epochs", EPOCHS, "--lr", "1e-3", "--precision", "fp32", "--seed", "3", "--out", out, *extra]
    result = CliRunner().invoke(app, [str(a) for a in command])
    assert result.exit_code == 0, result.output
    return Run.open(out)


def key_paths(values: dict, prefix: str = "") -> set[str]:
    """Every key of a nested dict, as a dotted path."""
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        if isinstance(value, dict):
            paths |= key_paths(value, f"{prefix}{key}.")
    return paths


def files(run: Run) -> list[str]:
    return sorted(str(path.relative_to(run.path)) for path in run.path.rglob("*"))


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_write_the_run_one_process_writes(task, tmp_path):
    arguments = TASKS[task](tmp_path)
    # The same effective batch: 8 rows in one process, 4 in each of two.
    one = train(task, arguments, tmp_path / "one", "--batch-size", "8")
    two = train(task, arguments, tmp_path / "two", "--batch-size", "4", "--nproc", "2")

    assert one.metrics["train"]["processes"] == 1 and two.metrics["train"]["processes"] == 2
    assert two.metrics["train"]["steps"] == one.metrics["train"]["steps"]
    # Each process's loss is its batch's mean, not scaled by the process count: the two runs train alike.
    assert two.metrics["train"]["train_loss"] == pytest.approx(one.metrics["train"]["train_loss"], rel=0.1)
    assert files(two) == files(one)
    assert key_paths(two.metrics) - {"environment.threads"} == key_paths(one.metrics) - {"environment.threads"}
    assert two.config == {**one.config, "out": str(tmp_path / "two"), "batch_size": 4, "threads": two.config["threads"]}
    assert [line["epoch"] for line in two.history() if line["type"] == "eval"] == [1.0, 2.0]  # written once, by the main process
    assert not (tmp_path / ".two.partial").exists()
