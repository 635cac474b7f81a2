"""Trainer callbacks: a progress bar people can read, history.jsonl for the plots, and the list every Trainer of ours gets."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import EarlyStoppingCallback, TrainerCallback

from tunelab.eta import DurationEstimate, first_estimate, human_duration, steps_to_measure


def trainer_callbacks(history: Path, samples_per_step: int | None, early_stopping: int | None = None) -> list[TrainerCallback]:
    """history.jsonl; the progress bar unless samples_per_step is None (no progress shown); early stopping after that many evaluations without gain."""
    callbacks: list[TrainerCallback] = [HistoryCallback(history)]
    if samples_per_step is not None:
        callbacks.append(RichProgressCallback(samples_per_step))
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping))
    return callbacks


def quiet_libraries() -> None:
    """Our progress bar is the one that matters; the libraries' own bars are noise next to it."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


class RichProgressCallback(TrainerCallback):
    """One bar for the whole run: step, loss, samples/s, time left. Main process only.

    After the first `estimate_after` steps it prints the run's estimated duration, measured on this
    machine; the bar, the log lines and each epoch's line then carry the updated time left.
    """

    def __init__(self, samples_per_step: int, estimate_after: int = 10):
        self.samples_per_step = samples_per_step
        self.estimate_after = estimate_after
        self.progress: Progress | None = None
        self.task = None
        self.started = 0.0
        self.first_step = 0
        self.estimate: DurationEstimate | None = None
        self.epoch_ended = False
        self.announced = False

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.progress = Progress(
            TextColumn("[bold]training[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]}  {task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=Console(stderr=True),  # stdout stays clean for results (--json, scripts)
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, epoch=0.0, loss="—", speed="", eta="measuring")
        self.progress.update(self.task, completed=state.global_step)
        self.started, self.first_step = time.perf_counter(), state.global_step
        self.estimate = DurationEstimate(state.max_steps, _steps_per_epoch(args, state, kwargs.get("train_dataloader")))
        self.epoch_ended = self.announced = False

    def on_epoch_end(self, args, state, control, **kwargs):
        self.epoch_ended = True  # the next step's interval holds the evaluation and the checkpoint

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.started
        done = state.global_step - self.first_step
        speed = f"{done * self.samples_per_step / elapsed:.1f} samples/s" if elapsed > 0 else ""
        self.estimate.observe(state.global_step, time.perf_counter(), after_epoch_end=self.epoch_ended)
        self.epoch_ended = False
        left = self.estimate.seconds_left(state.global_step)
        eta = human_duration(left) if left is not None and self.estimate.measured >= 2 else "measuring"
        self.progress.update(self.task, completed=state.global_step, epoch=state.epoch or 0.0, speed=speed, eta=eta)
        if not self.announced and self.estimate.measured >= steps_to_measure(state.max_steps - self.first_step, self.estimate_after):
            self.announced = True
            self.progress.console.print(first_estimate(self.estimate, state.global_step, elapsed), highlight=False, soft_wrap=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
            if not self.progress.console.is_terminal:
                # A log file or CI has no live bar: print the bar's content as a line instead.
                fields = self.progress.tasks[0].fields
                self.progress.console.print(
                    f"step {state.global_step}/{state.max_steps}  epoch {state.epoch:.2f}  loss {fields['loss']}  {fields['speed']}  eta {fields['eta']}",
                    highlight=False,
                )
        if "eval_loss" in logs:
            parts = [f"eval loss {logs['eval_loss']:.4f}"]
            for key in ("eval_accuracy", "train_accuracy"):
                if key in logs:
                    parts.append(f"{key.replace('_', ' ')} {logs[key]:.4f}")
            left = self.estimate.seconds_left(state.global_step) if self.estimate else None
            if left is not None and state.global_step < state.max_steps:
                parts.append(f"about {human_duration(left)} left")
            self.progress.console.print(f"epoch {state.epoch:.2f}: " + ", ".join(parts), highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _steps_per_epoch(args, state, train_dataloader) -> int:
    """Optimizer steps per epoch, as the Trainer counts them."""
    try:
        return max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
    except TypeError:  # no dataloader, or one without a length
        return max(1, math.ceil(state.max_steps / max(1, math.ceil(state.num_train_epochs or 1))))


class HistoryCallback(TrainerCallback):
    """Appends every log (training steps, evaluations, the final summary) to history.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            kind = "summary"
        elif any(key.startswith("eval_") for key in logs):
            kind = "eval"
        else:
            kind = "train"
        record = {"type": kind, "step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
