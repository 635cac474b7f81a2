"""Fine-tuning an encoder for text classification: the recipe, top to bottom.

load data -> split -> tokenizer -> max length -> profile -> tokenize -> model -> Trainer -> train
-> save model -> evaluate on the test split -> publish the run directory.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from rich.console import Console  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
    TrainingArguments,
)

from tunelab import atomic, hardware  # noqa: E402
from tunelab.callbacks import HistoryCallback, RichProgressCallback, quiet_libraries  # noqa: E402
from tunelab.config import TrainConfig, describe_recipe, resolve_recipe, to_yaml  # noqa: E402
from tunelab.data import load_splits, profile_splits  # noqa: E402
from tunelab.data.tokenize import choose_max_length, token_lengths, tokenize_frame  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.eta import steps_to_measure  # noqa: E402
from tunelab.models.catalogue import resolve_model  # noqa: E402
from tunelab.models.classifier import model_max_length  # noqa: E402
from tunelab.models.pooling import new_classifier  # noqa: E402
from tunelab.run import Run, named_after, out_dir, refuse_existing, start_staging  # noqa: E402
from tunelab.textpairs import frame_inputs  # noqa: E402
from tunelab.training import memory  # noqa: E402
from tunelab.training.resume import resume_point, truncate_history  # noqa: E402
from tunelab.training.trainer import AccuracyTrainer, balanced_class_weights, classification_scores  # noqa: E402


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> Run:
    """Fine-tune config.model on config.data and return the finished run directory.

    Launched by torchrun/accelerate, every process runs this function; only the main process
    writes the run directory. With resume, training continues from the last checkpoint that a
    killed run left in its staging folder.
    """
    from accelerate import PartialState

    quiet_libraries()
    out = resolve_out_dir(config)
    staging = atomic.partial_path(out)
    refuse_existing(out, config.overwrite)
    check_integrations(config.report_to)
    # Joins the process group when launched by torchrun / accelerate (gloo on CPU), as the Trainer will.
    state = PartialState(cpu=not torch.cuda.is_available())
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    precision = hardware.resolve_precision(config.precision)

    # 1. Data: load, split (stratified, seeded), and check before anything expensive.
    splits, dropped = load_splits(config)
    # The recipe (default, or small-data below config.SMALL_DATA_ROWS training rows) fills the settings not given.
    config = resolve_recipe(config, len(splits["train"]))
    point = resume_point(staging, config.epochs) if resume else None
    checkpoint = point.checkpoint if point else None
    labels = sorted(splits["train"]["label"].unique())
    label2id = {label: i for i, label in enumerate(labels)}

    # 2. Tokenizer, and a max length chosen from the data rather than the model's 512.
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_config = transformers.AutoConfig.from_pretrained(model_dir)
    model_limit = model_max_length(model_config, tokenizer)
    if config.max_length is not None and config.max_length > model_limit:
        raise TunelabError(f"--max-length {config.max_length} exceeds the model's limit of {model_limit} tokens", f"use at most {model_limit}")
    train_lengths = token_lengths(tokenizer, frame_inputs(splits["train"]), seed=config.seed)
    max_length = config.max_length or choose_max_length(train_lengths, model_limit, config.length_percentile)
    profile = profile_splits(splits, tokenizer, model_limit, dropped)
    profile["max_length"] = max_length

    lr = resolve_lr(config.lr, model_config)

    # 3. Model: the pretrained encoder with a fresh classification head; then the plan.
    model = build_model(model_dir, config, labels)
    parameters, trainable = sum(p.numel() for p in model.parameters()), count_trainable(model)
    batch_size = config.batch_size
    if batch_size == "auto":
        budget = int(0.6 * memory.available_memory())
        batch_size = memory.largest_batch(model_config, parameters, trainable, max_length, precision, budget)
    plan = memory.estimate(model_config, parameters, trainable, batch_size, max_length, precision)
    memory.check_disk(out.parent, parameters, trainable, config.keep_checkpoints)
    if progress and state.is_main_process:
        print_plan(config, splits, labels, max_length, batch_size, lr, precision, state.num_processes, parameters, trainable, plan)
        if point is not None:
            Console(stderr=True).print(point.describe(), highlight=False)

    # 4. Stage the run directory (main process only; the others wait for it).
    resolved = dict(out=str(out), max_length=max_length, precision=precision, threads=threads, batch_size=batch_size, lr=lr)
    if state.is_main_process:
        if checkpoint is None:
            start_staging(staging, to_yaml(config, **resolved), splits, labels, profile)
        else:
            truncate_history(staging / "history.jsonl", checkpoint)
    state.wait_for_everyone()

    # 5. Tokenize: input IDs and attention masks, unpadded (each batch is padded to its longest example).
    datasets = {name: tokenize_frame(split, tokenizer, max_length, label2id) for name, split in splits.items()}

    # 6. Trainer.
    args = training_arguments(config, staging / "checkpoints", precision, batch_size, lr, len(datasets["train"]) // state.num_processes)
    callbacks = [HistoryCallback(staging / "history.jsonl")]
    if progress:
        callbacks.append(RichProgressCallback(batch_size * config.grad_accum * args.world_size))
    if config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping))
    class_weights = resolve_class_weights(config.class_weights, datasets["train"]["labels"], labels)
    trainer = AccuracyTrainer(
        class_weights=class_weights,
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=classification_scores,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and history.jsonl replace the printed dicts

    # 7. Train; the best checkpoint by eval accuracy is loaded at the end.
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started

    # 8. Save, evaluate on the held-out test split, and publish the run (main process only).
    if state.is_main_process:
        # Metrics first: saving merges LoRA adapters into the weights, after which they no longer count as trainable.
        train_facts = training_metrics(trainer, result, train_seconds, precision, state.num_processes)
        save_model(trainer, staging / "model")
        atomic.write_json(staging / "metrics.json", train_facts)
        from tunelab.evaluate import evaluate_run

        evaluate_run(Run(staging), progress=progress, baseline=config.baseline)
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        atomic.publish_dir(staging, out, overwrite=config.overwrite)
    state.wait_for_everyone()
    return Run.open(out)


def check_integrations(report_to: list[str]) -> None:
    """Name a missing experiment tracker now, not after the data is tokenized."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = set(get_available_reporting_integrations())
    for name in report_to:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise TunelabError(
                f"unknown --report-to '{name}'",
                f"choose from: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}",
            )
        if name not in installed:
            raise TunelabError(f"--report-to {name}: the {name} package is not installed", f"install it with: pip install {name}")


def training_metrics(trainer, result, seconds: float, precision: str, processes: int) -> dict:
    best = trainer.state.best_model_checkpoint
    return {
        "train": {
            "train_runtime_s": seconds,
            "train_samples_per_second": result.metrics.get("train_samples_per_second"),
            "train_loss": result.metrics.get("train_loss"),
            "train_samples": len(trainer.train_dataset),
            "epochs": result.metrics.get("epoch"),
            "steps": result.global_step,
            "processes": processes,
            "best_checkpoint": Path(best).name if best else None,
            "best_eval_accuracy": trainer.state.best_metric,
            "peak_memory_mb": hardware.peak_memory_mb(),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "trainable_parameters": count_trainable(trainer.model),
        },
        "environment": hardware.environment(precision),
    }


def print_plan(config, splits, labels, max_length, batch_size, lr, precision, processes, parameters, trainable, plan) -> None:
    effective = batch_size * config.grad_accum * processes
    steps = max(1, len(splits["train"]) // effective) * config.epochs
    Console(stderr=True).print(
        f"[bold]plan[/]: {config.model} on {config.data} — {len(splits['train'])} train / {len(splits['eval'])} eval / "
        f"{len(splits['test'])} test rows, {len(labels)} classes; recipe {describe_recipe(config)}\n"
        f"      max length {max_length}, batch {batch_size} × accumulation {config.grad_accum} × {processes} process(es) "
        f"= {effective}, ≈{steps:.0f} steps, learning rate {lr:g}, {precision}\n"
        f"      parameters {parameters / 1e6:.1f}M ({trainable / 1e6:.1f}M trainable); memory per process {plan.describe()}\n"
        f"      duration: measured over the first {steps_to_measure(int(steps))} steps, then printed and kept up to date on the progress bar",
        highlight=False,
        soft_wrap=True,  # a log file keeps each line whole
    )


def quickstart_config(out: str | None = None) -> TrainConfig:
    """minilm on bbc-news, tuned to finish in minutes on a laptop CPU.

    News articles run to 500+ tokens, but the headline and first paragraph settle the topic:
    128 tokens keep >95% accuracy at a quarter of the compute. MiniLM's small hidden size
    wants a larger learning rate than BERT-base's usual 5e-5.
    """
    return TrainConfig(model="minilm", data="bbc-news", max_length=128, epochs=2, lr=2e-4, batch_size=16, out=out)


def resolve_out_dir(config: TrainConfig) -> Path:
    # launch.py names the folder before it starts the processes, so that every process trains into the same one.
    return out_dir(config.out, named_after(config.model, config.data))


def build_model(model_dir: Path, config: TrainConfig, labels: list[str]):
    # The encoder's pooler/head weights are replaced on purpose: hide the long "newly initialized" report.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = new_classifier(model_dir, config.pooling, labels)
    finally:
        transformers.logging.set_verbosity(level)
    if config.method == "head":
        for name, parameter in model.named_parameters():
            parameter.requires_grad = _is_head(name)
    elif config.method == "lora":
        model = _with_lora(model)
    return model


def _is_head(parameter_name: str) -> bool:
    return parameter_name.startswith(("classifier", "score", "pre_classifier"))


def _with_lora(model):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise TunelabError("method 'lora' needs peft", 'install it with: pip install -e ".[lm]"') from None
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear")
    return get_peft_model(model, lora)


def count_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(trainer, folder: Path) -> None:
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters in so model/ is a plain HF folder
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    trainer.processing_class.save_pretrained(folder)


def resolve_class_weights(setting: str | dict[str, float], train_labels: list[int], labels: list[str]) -> torch.Tensor | None:
    """The loss weight of each label id, or None for an unweighted loss."""
    if setting == "none":
        return None
    if setting == "balanced":
        return balanced_class_weights(train_labels, len(labels))
    missing = [label for label in labels if label not in setting]
    if missing:
        raise TunelabError(f"class_weights has no weight for {', '.join(map(repr, missing[:5]))}", "give a weight for every label, or use 'balanced'")
    return torch.tensor([float(setting[label]) for label in labels])


def resolve_lr(lr: float | str, model_config) -> float:
    """`auto`: 5e-5 (the usual rate for 768-wide BERT-base) times 768 / the model's width, within
    [1e-5, 1e-3]. Adam's best rate falls roughly as 1 / width, so narrow models want more: MiniLM
    (384 wide) gets 1e-4, which on tweets (600 examples, 2 epochs, 3 seeds) scored 0.680 against
    0.630 at 5e-5 (benchmarks/results/ablate_recipe-tweets-lr.jsonl)."""
    if lr != "auto":
        return float(lr)
    width = getattr(model_config, "hidden_size", None) or 768
    return float(min(1e-3, max(1e-5, 5e-5 * 768 / width)))


def training_arguments(config: TrainConfig, output_dir: Path, precision: str, batch_size: int, lr: float, train_rows: int) -> TrainingArguments:
    steps_per_epoch = max(1, train_rows // (batch_size * config.grad_accum))
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        auto_find_batch_size=config.batch_size == "auto" and torch.cuda.is_available(),  # halve on GPU OOM
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,  # transformers 5: a value below 1 is a fraction of the steps
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=config.keep_checkpoints,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=config.logging_steps or max(1, steps_per_epoch // 20),
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        length_column_name="length",
        report_to=config.report_to or "none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        deepspeed=config.deepspeed,
        fsdp=config.fsdp or "",
    )
