"""`tunelab resume` / `train --resume` say what they resume from, or how far a run got that has nothing to resume."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import sentiment_frame, sigkill_when
from tunelab.cli import app as cli
from tunelab.config import TrainConfig, to_yaml

BATCH, EPOCHS = 8, 3


def _train_lines(history: Path) -> list[dict]:
    if not history.is_file():
        return []
    lines = []
    for line in history.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass  # being written
    return [line for line in lines if line["type"] == "train"]


def _killed_run(tiny_bert, tmp_path: Path, when) -> tuple[Path, Path]:
    """Start `tunelab train` in a child process and SIGKILL it once `when(train log lines)` holds."""
    data = tmp_path / "reviews.csv"
    sentiment_frame(rows_per_class=100, seed=3).to_csv(data, index=False)
    out = tmp_path / "killed"
    config = TrainConfig(
        model=str(tiny_bert), data=str(data), epochs=EPOCHS, batch_size=BATCH, precision="fp32", logging_steps=1, out=str(out), recipe="default"
    )
    settings = tmp_path / "train.yaml"
    settings.write_text(to_yaml(config))
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "train", str(settings)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = tmp_path / ".killed.partial" / "history.jsonl"
    sigkill_when(process, lambda: when(_train_lines(history)), 240, "training reached the chosen point")
    return out, settings


def test_resume_names_the_checkpoint_and_the_epoch(tiny_bert, tmp_path):
    def in_epoch_two(lines):  # after the first epoch's checkpoint
        return any(1.0 < line["epoch"] < 1.8 for line in lines)

    out, _ = _killed_run(tiny_bert, tmp_path, in_epoch_two)
    steps_per_epoch = len(pd.read_parquet(tmp_path / ".killed.partial" / "splits" / "train.parquet")) // BATCH

    result = CliRunner().invoke(cli, ["resume", str(out)])
    assert result.exit_code == 0, result.output
    expected = f"resuming from checkpoint-{steps_per_epoch} (epoch 1 of {EPOCHS} done, step {steps_per_epoch} of {EPOCHS * steps_per_epoch})"
    assert expected in result.output, result.output
    assert (out / "model").is_dir()


def test_resume_before_the_first_checkpoint_says_how_far_it_got_and_what_to_do(tiny_bert, tmp_path):
    def early_in_epoch_one(lines):
        return any(line["epoch"] < 0.8 for line in lines)

    out, settings = _killed_run(tiny_bert, tmp_path, early_in_epoch_one)
    staging = tmp_path / ".killed.partial"
    last_step = _train_lines(staging / "history.jsonl")[-1]["step"]

    for command in (["resume", str(out)], ["train", str(settings), "--resume"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        joined = " ".join(result.output.split())
        assert f"the killed run stopped at step {last_step}, in epoch 1 of {EPOCHS}, before its first checkpoint" in joined, joined
        assert f"tunelab train {staging / 'config.yaml'}" in joined, joined

    # What the hint says to do works: the run starts again and finishes.
    result = CliRunner().invoke(cli, ["train", str(staging / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert (out / "model").is_dir() and not staging.exists()


def _staged_checkpoints(tmp_path: Path, processes: int = 1) -> Path:
    """A killed run's staging folder holding the checkpoints of epochs 1 and 2 (steps 10 and 20), as `processes` processes save them."""
    from tunelab.training.resume import record_processes

    staging = tmp_path / ".run.partial"
    (staging / "config.yaml").parent.mkdir(parents=True)
    (staging / "config.yaml").write_text("epochs: 2\n")
    record_processes(staging, processes)
    for step, epoch in ((10, 1.0), (20, 2.0)):
        folder = staging / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 20, "epoch": epoch}))
        for rank in range(processes) if processes > 1 else ():
            with zipfile.ZipFile(folder / f"rng_state_{rank}.pth", "w") as rng_state:  # torch.save writes a zip
                rng_state.writestr("data.pkl", b"state")
    return staging


@pytest.mark.parametrize("cut", [False, True])
def test_a_checkpoint_cut_off_while_saving_is_skipped(tmp_path, cut):
    from tunelab.training.resume import resume_point

    staging = _staged_checkpoints(tmp_path)
    if cut:  # killed before the Trainer wrote the state, its last file
        (staging / "checkpoints" / "checkpoint-20" / "trainer_state.json").unlink()
    point = resume_point(staging, epochs=2)
    assert point.describe() == (
        "resuming from checkpoint-10 (epoch 1 of 2 done, step 10 of 20)" if cut else "resuming from checkpoint-20 (epoch 2 of 2 done, step 20 of 20)"
    )


@pytest.mark.parametrize("rng_state", ["missing", "cut short"])
def test_a_two_process_checkpoint_without_every_rng_state_is_skipped(tmp_path, rng_state):
    from tunelab.training.resume import resume_point

    staging = _staged_checkpoints(tmp_path, processes=2)
    # The main process writes the trainer state while the other saves its RNG state: a kill can fall in between.
    last = staging / "checkpoints" / "checkpoint-20" / "rng_state_1.pth"
    if rng_state == "missing":
        last.unlink()
    else:
        last.write_bytes(last.read_bytes()[:10])
    assert resume_point(staging, epochs=2, processes=2).checkpoint.name == "checkpoint-10"


def test_resuming_with_another_process_count_is_refused(tmp_path):
    from tunelab.errors import TunelabError
    from tunelab.training.resume import resume_point

    staging = _staged_checkpoints(tmp_path, processes=2)
    with pytest.raises(TunelabError, match="trained by 2 processes; resuming it with 1 process would change its batches") as refused:
        resume_point(staging, epochs=2)
    assert refused.value.hint == "resume it with --nproc 2"
    assert resume_point(staging, epochs=2, processes=2).checkpoint.name == "checkpoint-20"
    # a run killed before the count was recorded: the count given is taken at its word
    (staging / "checkpoints" / "processes.json").unlink()
    assert resume_point(staging, epochs=2, processes=2).checkpoint.name == "checkpoint-20"
