"""Resuming a killed run: which checkpoint, where it stands in the run, how many processes trained it, and the history after it."""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tunelab import atomic
from tunelab.errors import TunelabError

# What the Trainer writes last into a checkpoint: a folder without it was cut off while saving.
STATE_FILE = "trainer_state.json"
# How many processes train the run, beside its checkpoints: a resume continues with as many, since the batches, the
# steps per epoch and the RNG states the Trainer saves (one per process) all depend on it.
PROCESSES_FILE = "processes.json"


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Path
    step: int
    max_steps: int
    epoch: float
    epochs: float

    def describe(self) -> str:
        return f"resuming from {self.checkpoint.name} (epoch {_number(self.epoch)} of {_number(self.epochs)} done, step {self.step} of {self.max_steps})"


def resume_point(staging: Path, epochs: float, processes: int = 1) -> ResumePoint:
    """The last complete checkpoint a killed run left in its staging folder, or a TunelabError saying how far it got
    or that it needs the `processes` it was trained by."""
    # A run killed before the count was recorded says nothing: the count given is taken at its word.
    trained_by = recorded_processes(staging) or processes
    found = complete_checkpoints(staging / "checkpoints", trained_by)
    if not found:
        raise TunelabError(*_nothing_to_resume(staging, epochs))
    if processes != trained_by:
        raise TunelabError(
            f"the killed run in {staging} was trained by {_processes(trained_by)}; resuming it with {_processes(processes)} would change its batches",
            f"resume it with --nproc {trained_by}" if trained_by > 1 else "resume it without --nproc",
        )
    checkpoint = found[-1]
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    return ResumePoint(checkpoint, int(state["global_step"]), int(state.get("max_steps") or 0), float(state.get("epoch") or 0.0), epochs)


def record_processes(staging: Path, processes: int) -> None:
    """Note how many processes train the run that starts in `staging` (recorded_processes reads it back)."""
    atomic.write_json(staging / "checkpoints" / PROCESSES_FILE, {"processes": processes})


def recorded_processes(staging: Path) -> int | None:
    """How many processes trained the killed run in `staging` (None when it says nothing)."""
    path = staging / "checkpoints" / PROCESSES_FILE
    return int(json.loads(path.read_text(encoding="utf-8"))["processes"]) if path.is_file() else None


def complete_checkpoints(folder: Path, processes: int = 1) -> list[Path]:
    """checkpoint-N folders holding a readable trainer state and, from `processes` > 1, every process's RNG state, by step."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.rsplit("-", 1)[1]
        if step.isdigit() and _readable_state(path / STATE_FILE) and _rng_states_saved(path, processes):
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def _rng_states_saved(checkpoint: Path, processes: int) -> bool:
    # Each process saves its own rng_state_<rank>.pth (a zip, torch.save's format) while the main one writes the trainer
    # state, so a kill can leave the state written and another process's RNG file missing or cut short.
    return processes == 1 or all(zipfile.is_zipfile(checkpoint / f"rng_state_{rank}.pth") for rank in range(processes))


def _readable_state(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _nothing_to_resume(staging: Path, epochs: float) -> tuple[str, str]:
    if not (staging / "config.yaml").is_file():
        return f"nothing to resume: no interrupted run in {staging}", "start the run without --resume"
    # Checkpoints are written at the end of each epoch; say how far the killed run got in the same terms.
    logged = [line for line in _history(staging / "history.jsonl") if line.get("type") == "train"]
    where = f"epoch 1 of {_number(epochs)}"
    if logged:
        last = logged[-1]
        current = min(math.floor(float(last.get("epoch") or 0.0)) + 1, math.ceil(epochs))
        where = f"step {last['step']}, in epoch {current} of {_number(epochs)}"
    return (
        f"nothing to resume: the killed run stopped at {where}, before its first checkpoint (saved at the end of each epoch)",
        f"start it again: the same `tunelab train` command without --resume, or tunelab train {staging / 'config.yaml'}",
    )


def _history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass  # the line the kill cut short
    return lines


def truncate_history(path: Path, checkpoint: Path) -> None:
    """Drop the log lines written after the checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    step = int(checkpoint.name.rsplit("-", 1)[1])
    kept = [json.dumps(line) for line in _history(path) if line["step"] <= step]
    atomic.write_text(path, "".join(line + "\n" for line in kept))


def _processes(count: int) -> str:
    return "1 process" if count == 1 else f"{count} processes"


def _number(value: float) -> str:
    return f"{round(value, 2):g}"
