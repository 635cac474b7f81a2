"""What every Hugging Face Trainer run of ours shares, encoder tasks (training/trainer_setup.py) and
causal-LM fine-tuning (lm/sft.py) alike: the TrainingArguments, the timed `train()` call and the
training facts of metrics.json. Each caller's own choices (checkpointing, loss-only evaluation, ...)
are parameters, so the two paths cannot drift apart."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import TrainingArguments

from tunelab import hardware

# About this many loss logs per epoch when `logging_steps` is not given: enough points for the
# history plot, few enough that logging costs nothing.
LOGS_PER_EPOCH = 20


class LoopSettings(Protocol):
    """The settings both `config.TrainerSettings` and `lm.config.SFTConfig` declare for the training loop."""

    epochs: float
    eval_batch_size: int
    grad_accum: int
    weight_decay: float
    warmup: float
    logging_steps: int | None
    report_to: list[str]
    seed: int


def training_arguments(
    settings: LoopSettings,
    output_dir: Path,
    *,
    batch_size: int,
    lr: float,
    precision: str,
    train_rows: int,
    group_by_length: bool,
    best_metric: str | None = None,
    keep_checkpoints: int = 1,
    loss_only: bool = False,
    activation_checkpointing: bool = False,
    auto_find_batch_size: bool = False,
    deepspeed: str | None = None,
    fsdp: str | None = None,
) -> TrainingArguments:
    """Evaluate every epoch; with `best_metric`, also checkpoint every epoch (keeping `keep_checkpoints`)
    and load the best epoch by it at the end (a loss is lower-better), else save no checkpoints.
    `loss_only`: evaluation gathers no logits. About LOGS_PER_EPOCH logs per epoch; train_rows counts one process's share."""
    steps_per_epoch = max(1, math.ceil(train_rows / (batch_size * settings.grad_accum)))
    checkpointing: dict[str, Any] = {"save_strategy": "no"}
    if best_metric is not None:
        checkpointing = {
            "save_strategy": "epoch",
            "save_total_limit": keep_checkpoints,
            "load_best_model_at_end": True,
            "metric_for_best_model": best_metric,
            "greater_is_better": not best_metric.endswith("loss"),
        }
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        auto_find_batch_size=auto_find_batch_size,
        per_device_eval_batch_size=settings.eval_batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup,  # transformers 5: a value below 1 is a fraction of the steps
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch",
        prediction_loss_only=loss_only,
        activation_checkpointing=activation_checkpointing,
        **checkpointing,
        logging_strategy="steps",
        logging_steps=settings.logging_steps or max(1, steps_per_epoch // LOGS_PER_EPOCH),
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        length_column_name="length",
        report_to=settings.report_to or "none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        deepspeed=deepspeed,
        fsdp=fsdp or "",
    )


@dataclass(frozen=True)
class Trained:
    result: Any  # the Trainer's TrainOutput
    seconds: float


def train_timed(trainer, checkpoint: Path | None = None) -> Trained:
    """Train (from `checkpoint` when resuming); with a best metric, the best checkpoint is loaded at the end."""
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return Trained(result, time.perf_counter() - started)


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_facts(trainer, trained: Trained, precision: str, **task_facts: Any) -> dict[str, Any]:
    """metrics.json's "train" (what every run reports, plus the caller's `task_facts`) and "environment".

    Call it before saving the model: saving may merge LoRA adapters into the weights, after which they no longer count as trainable.
    """
    result = trained.result
    return {
        "train": {
            "train_runtime_s": trained.seconds,
            "train_loss": result.metrics.get("train_loss"),
            "epochs": result.metrics.get("epoch"),
            "steps": result.global_step,
            **task_facts,
            "peak_memory_mb": hardware.peak_memory_mb(),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "trainable_parameters": count_trainable(trainer.model),
        },
        "environment": hardware.environment(precision),
    }
