"""Scale out and survive faults: two-process CPU training (gloo), resume after SIGKILL, determinism."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import sentiment_frame, sigkill_when
from tests.test_distributed_tasks import files, key_paths
from tunelab.cli import app
from tunelab.config import TrainConfig, to_yaml
from tunelab.errors import TunelabError
from tunelab.run import Run
from tunelab.training.classify import train
from tunelab.training.launch import train_multiprocess
from tunelab.training.resume import complete_checkpoints


@pytest.fixture
def reviews(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=200, seed=3).to_csv(path, index=False)
    return path


def config_for(tiny_bert, data, out, **extra) -> TrainConfig:
    # A large learning rate for the tiny model, so it warms up (the default of none suits 5e-5).
    settings = dict(model=str(tiny_bert), data=str(data), epochs=4, lr=5e-3, warmup=0.1, batch_size=8, precision="fp32", seed=5, out=str(out), recipe="default")
    settings.update(extra)
    return TrainConfig(**settings)


def test_two_processes_match_one(tiny_bert, reviews, tmp_path):
    single = train(config_for(tiny_bert, reviews, tmp_path / "one", batch_size=16), progress=False)
    double = train_multiprocess(config_for(tiny_bert, reviews, tmp_path / "two", batch_size=8), nproc=2)
    assert double.metrics["train"]["processes"] == 2
    assert single.metrics["train"]["processes"] == 1
    # Same effective batch (8 x 2 processes = 16), so the same number of optimizer steps.
    assert double.metrics["train"]["steps"] == single.metrics["train"]["steps"]
    assert sorted(p.name for p in double.path.iterdir()) == sorted(p.name for p in single.path.iterdir())
    # Different shuffles across processes: close, not identical (tolerance documented in the README).
    assert single.metrics["accuracy"] > 0.9
    assert abs(double.metrics["accuracy"] - single.metrics["accuracy"]) <= 0.05
    assert abs(double.metrics["loss"] - single.metrics["loss"]) <= 0.1
    history = [h for h in double.history() if h["type"] == "eval"]
    assert len(history) == 4  # one per epoch, written once, by the main process only


def _history_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _in_epoch_two(history: Path) -> bool:
    """In the middle of the second epoch: after the first epoch's checkpoint exists."""
    return any(h["type"] == "train" and 1.2 < h["epoch"] < 1.8 for h in _history_lines(history))


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_bert, reviews, tmp_path):
    out = tmp_path / "killed"
    config = config_for(tiny_bert, reviews, out, logging_steps=1)
    settings = tmp_path / "train.yaml"
    settings.write_text(to_yaml(config))
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(settings)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = tmp_path / ".killed.partial" / "history.jsonl"
    sigkill_when(process, lambda: _in_epoch_two(history), 240, "training reached the middle of epoch 2")

    # A killed run never looks complete.
    assert not out.exists()
    with pytest.raises(TunelabError, match="did not finish"):
        Run.open(out)

    resumed = train(config, progress=False, resume=True)
    reference = train(config_for(tiny_bert, reviews, tmp_path / "whole", logging_steps=1), progress=False)
    # fp32 on one process: the resumed run ends exactly where the uninterrupted one does.
    assert resumed.metrics["accuracy"] == reference.metrics["accuracy"]
    assert resumed.metrics["loss"] == pytest.approx(reference.metrics["loss"], abs=1e-5)
    steps = [h["step"] for h in resumed.history() if h["type"] == "train"]
    assert steps == sorted(set(steps)), "history has no duplicated steps after resuming"


def _processes_marked(marker: str) -> list[int]:
    """The live processes whose environment holds `marker`: a child's environment is inherited by everything it starts."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass  # ended meanwhile, or not ours
    return found


def _survivors(marker: str, grace: float) -> list[int]:
    """The processes marked `marker` still alive after `grace` seconds."""
    deadline = time.monotonic() + grace
    while (alive := _processes_marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def test_a_killed_two_process_run_resumes_with_its_two_processes(tiny_bert, reviews, tmp_path, capfd):
    out = tmp_path / "killed"
    config = config_for(tiny_bert, reviews, out, epochs=2, logging_steps=1)
    settings = tmp_path / "train.yaml"
    settings.write_text(to_yaml(config))
    staging = tmp_path / ".killed.partial"
    run_id = uuid.uuid4().hex
    marker = f"TUNELAB_TEST_RUN={run_id}"
    # Its own process group, as a terminal gives a command; torchrun starts each worker in a session of its own.
    with (tmp_path / "killed.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunelab", "train", str(settings), "--nproc", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, TUNELAB_TEST_RUN=run_id),
        )
    try:
        sigkill_when(process, lambda: _in_epoch_two(staging / "history.jsonl"), 240, "training reached the middle of epoch 2", group=True)
        # The workers are outside the killed group: they must end with their launcher, not train on into the staging folder.
        assert _survivors(marker, grace=5) == [], "training processes outlived the killed launcher"
        assert not out.exists()
        with pytest.raises(TunelabError, match="did not finish"):
            Run.open(out)
        staged = (staging / "config.yaml").stat().st_ino
        # The newest whole checkpoint the kill left. Usually epoch 1's; but the watcher shares two cores with two training
        # processes: a full-suite run once failed the old check (epoch 1 named), most likely because the kill landed
        # only after epoch 2's checkpoint was written (unconfirmed: that run did not print the resume's stderr).
        newest = complete_checkpoints(staging / "checkpoints", processes=2)[-1].name.removeprefix("checkpoint-")
        capfd.readouterr()
        result = CliRunner().invoke(app, ["resume", str(out)])  # no --nproc: the killed run's own two processes
    finally:
        for pid in _processes_marked(marker):
            os.kill(pid, signal.SIGKILL)
    assert result.exit_code == 0, result.output
    # Said by the main worker, on the stderr torchrun's processes share with this one.
    said = capfd.readouterr().err
    resumed_from = re.search(rf"resuming from checkpoint-({newest}) \(epoch (\d) of 2 done, step \1 of (\d+)\)", said)
    assert resumed_from, f"the resume names the newest checkpoint, {newest}; its stderr ended with {said[-1500:]!r}"
    assert int(resumed_from.group(1)) * 2 == int(resumed_from.group(3)) * int(resumed_from.group(2)), "the epoch it names is the checkpoint's"
    resumed = Run.open(out)
    assert (out / "config.yaml").stat().st_ino == staged, "the resume kept the killed run's staging folder"
    reference = train_multiprocess(config_for(tiny_bert, reviews, tmp_path / "whole", epochs=2, logging_steps=1), nproc=2)

    assert resumed.metrics["train"]["processes"] == reference.metrics["train"]["processes"] == 2
    assert resumed.metrics["train"]["steps"] == reference.metrics["train"]["steps"] == int(resumed_from.group(3))  # one process takes twice as many
    assert files(resumed) == files(reference)
    assert key_paths(resumed.metrics) == key_paths(reference.metrics)
    # fp32, each process's shard of the seeded batch order and its RNG state restored, and a sum of two gradients that
    # no order changes: the resumed run ends exactly where the uninterrupted one does.
    assert resumed.metrics["accuracy"] == reference.metrics["accuracy"]
    assert resumed.metrics["loss"] == pytest.approx(reference.metrics["loss"], abs=1e-5)
    steps = [h["step"] for h in resumed.history() if h["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == resumed.metrics["train"]["steps"], "history has no duplicated steps after resuming"


def test_resume_without_checkpoint_is_a_clear_error(tiny_bert, reviews, tmp_path):
    with pytest.raises(TunelabError, match="nothing to resume"):
        train(config_for(tiny_bert, reviews, tmp_path / "never"), progress=False, resume=True)


def test_bf16_is_deterministic_too(tiny_bert, reviews, tmp_path):
    from tunelab.hardware import bf16_is_fast

    if not bf16_is_fast():
        pytest.skip("this CPU has no fast bf16")
    first = train(config_for(tiny_bert, reviews, tmp_path / "a", precision="bf16", epochs=1), progress=False).metrics
    second = train(config_for(tiny_bert, reviews, tmp_path / "b", precision="bf16", epochs=1), progress=False).metrics
    assert first["accuracy"] == second["accuracy"]
    assert first["loss"] == pytest.approx(second["loss"], abs=1e-4)


def test_memory_plan_and_auto_batch(tiny_bert):
    from transformers import AutoConfig

    from tunelab.training import memory

    config = AutoConfig.from_pretrained(tiny_bert)
    small = memory.estimate(config, 100_000, 100_000, 8, 64, "fp32")
    large = memory.estimate(config, 100_000, 100_000, 16, 64, "fp32")
    assert large.activations == 2 * small.activations
    assert small.weights == 400_000 and small.optimizer == 800_000
    budget = memory.estimate(config, 100_000, 100_000, 32, 64, "fp32").total
    assert memory.largest_batch(config, 100_000, 100_000, 64, "fp32", budget) == 32


def test_disk_check_refuses_when_checkpoints_cannot_fit(tmp_path):
    from tunelab.training import memory

    with pytest.raises(TunelabError, match="not enough free disk"):
        memory.check_disk(tmp_path, parameters=10**14, trainable=10**14, keep_checkpoints=1)
