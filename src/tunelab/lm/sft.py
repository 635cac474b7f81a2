"""Supervised fine-tuning of a causal LM, top to bottom.

load instruction data -> split -> tokenizer (+ chat template) -> max length -> tokenize with the
loss on answers only -> model -> samples and eval loss before -> LoRA -> Trainer (logits at answer
positions only) -> train -> eval loss and samples after -> save adapter (or full model) -> metrics,
report -> publish the run.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from tunelab import atomic, hardware  # noqa: E402
from tunelab.callbacks import quiet_libraries, trainer_callbacks  # noqa: E402
from tunelab.config import to_yaml  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.lm import report  # noqa: E402
from tunelab.lm.config import SFTConfig  # noqa: E402
from tunelab.lm.data import InstructionData, load_instructions, prompt_of  # noqa: E402
from tunelab.lm.generate import generate_samples  # noqa: E402
from tunelab.lm.load import LMSource, context_limit, resolve_lm  # noqa: E402
from tunelab.lm.tokenize import IGNORE, ensure_chat_template, full_lengths, tokenize_rows  # noqa: E402
from tunelab.lm.trainer import AnswerOnlyTrainer, supports_logits_to_keep  # noqa: E402
from tunelab.run import Run, named_after, out_dir, refuse_existing, start_staging  # noqa: E402

MAX_LENGTH_CAP = 1024  # the default limit; CPU attention cost grows with the square of the length


def sft(config: SFTConfig, progress: bool = True) -> Run:
    """Fine-tune config.model on config.data; returns the finished run."""
    quiet_libraries()
    out = out_dir(config.out, named_after(config.model, config.data, prefix="sft-"))
    refuse_existing(out, config.overwrite)
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    precision = hardware.resolve_precision(config.precision)
    data = load_instructions(config.data, config.format, config.encoding)  # checked before anything expensive
    train_rows, eval_rows = split_rows(data, config)
    source = base_model(config.model)
    tokenizer, added_template = load_tokenizer(source.base)
    limit = context_limit(transformers.AutoConfig.from_pretrained(source.base))
    max_length = choose_max_length(config, tokenizer, train_rows, limit)
    tokenized = tokenize_splits(tokenizer, train_rows, eval_rows, max_length)
    model = load_model(source.base)
    samples = SampleGenerations([prompt_of(row) for row in eval_rows[: config.samples]], config.sample_tokens, precision)
    samples.before = samples.generate(model, tokenizer)
    if config.method == "lora":
        model = with_lora(model, config)
    with atomic.staged_dir(out, overwrite=config.overwrite, keep_partial=False) as stage:
        # Only real settings, resolved: config.yaml reloads as an SFTConfig to repeat the run.
        start_staging(stage, to_yaml(config, out=str(out), lr=config.learning_rate, max_length=max_length, precision=precision, threads=threads))
        trainer = build_trainer(config, model, tokenizer, tokenized, stage, precision, progress)
        outcome = train_between_evaluations(trainer)
        samples.after = samples.generate(trainer.model, tokenizer)
        save_model(trainer, tokenizer, stage / "model")
        metrics = sft_metrics(config, data, tokenized, outcome, trainer.model, max_length, added_template, precision)
        write_results(stage, out.name, config, metrics, samples.records())
    return Run.open(out)


@dataclass
class Tokenized:
    """The train and eval examples as token ids with answer-only labels, and what tokenizing cost."""

    train: Any  # datasets.Dataset with input_ids, labels and length
    eval: Any
    truncated: int
    dropped_no_answer_left: int


@dataclass
class TrainingOutcome:
    before: dict[str, float]  # trainer.evaluate() before training
    after: dict[str, float]
    result: Any  # the Trainer's TrainOutput
    seconds: float


@dataclass
class SampleGenerations:
    """Greedy answers to a few eval prompts, before and after training, for the report."""

    prompts: list[tuple[Any, str]]  # (prompt, reference answer)
    max_new_tokens: int
    precision: str
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)

    def generate(self, model, tokenizer) -> list[str]:
        return generate_samples(model, tokenizer, [p for p, _ in self.prompts], self.max_new_tokens, self.precision)

    def records(self) -> list[dict[str, Any]]:
        return [{"prompt": prompt, "reference": reference, "before": b, "after": a} for (prompt, reference), b, a in zip(self.prompts, self.before, self.after)]


def base_model(name: str) -> LMSource:
    """The model to fine-tune: a full model; an adapter would need its base merged in first."""
    source = resolve_lm(name)
    if source.adapter is not None:
        raise TunelabError(f"'{name}' is a LoRA adapter", "merge it first (`tunelab lm merge`) and fine-tune the merged folder")
    return source


def load_tokenizer(folder: Path):
    """The tokenizer, with a pad token and a chat template; and whether the fallback template was added."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, ensure_chat_template(tokenizer)


def tokenize_splits(tokenizer, train_rows: list[dict], eval_rows: list[dict], max_length: int) -> Tokenized:
    """Answers are labelled, prompts are -100; examples whose answer is cut off entirely are dropped."""
    train_set, train_counts = tokenize_rows(tokenizer, train_rows, max_length)
    eval_set, eval_counts = tokenize_rows(tokenizer, eval_rows, max_length)
    if len(train_set) == 0 or len(eval_set) == 0:
        raise TunelabError(f"no examples left after truncating to {max_length} tokens", "raise --max-length")
    return Tokenized(
        train_set,
        eval_set,
        train_counts["truncated"] + eval_counts["truncated"],
        train_counts["no_answer_left"] + eval_counts["no_answer_left"],
    )


def load_model(folder: Path):
    """Float32 weights (bf16 is autocast by the Trainer)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.use_cache = False  # training needs no cache, and packing needs none to keep examples apart
    return model


def build_trainer(config: SFTConfig, model, tokenizer, tokenized: Tokenized, stage: Path, precision: str, progress: bool) -> Trainer:
    args = training_arguments(config, stage / "checkpoints", precision, len(tokenized.train))
    callbacks = trainer_callbacks(stage / "history.jsonl", config.batch_size * config.grad_accum * args.world_size if progress else None)
    # Answer-only logits where the model allows it: same loss, a fraction of the memory and time.
    trainer_class = AnswerOnlyTrainer if config.answer_only_logits and supports_logits_to_keep(model) else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=tokenized.train,
        eval_dataset=tokenized.eval.remove_columns("length"),
        processing_class=tokenizer,
        data_collator=make_collator(tokenizer, config.packing),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train_between_evaluations(trainer: Trainer) -> TrainingOutcome:
    """Eval loss before, train, eval loss after."""
    before = trainer.evaluate()
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    return TrainingOutcome(before, trainer.evaluate(), result, seconds)


def save_model(trainer: Trainer, tokenizer, folder: Path) -> None:
    """The adapter (small; it names its base folder) or the full model, with the tokenizer; no checkpoints."""
    trainer.model.config.use_cache = True
    trainer.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.rmtree(folder.parent / "checkpoints", ignore_errors=True)


def sft_metrics(
    config: SFTConfig, data: InstructionData, tokenized: Tokenized, outcome: TrainingOutcome, model, max_length: int, added_template: bool, precision: str
) -> dict[str, Any]:
    seconds = outcome.seconds
    trained_tokens = sum(tokenized.train["length"])
    return {
        "eval_before": _loss_record(outcome.before),
        "eval_after": _loss_record(outcome.after),
        "train": {
            "method": config.method,
            "train_runtime_s": seconds,
            "train_loss": outcome.result.metrics.get("train_loss"),
            "train_examples": len(tokenized.train),
            "eval_examples": len(tokenized.eval),
            "epochs": outcome.result.metrics.get("epoch", config.epochs),
            "steps": outcome.result.global_step,
            "train_tokens_per_second": trained_tokens * config.epochs / seconds if seconds > 0 else None,
            "peak_memory_mb": hardware.peak_memory_mb(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "data": {
            "source": data.source,
            "format": data.format,
            "rows": len(data.rows),
            "dropped_empty": data.dropped.get("empty", 0),
            "max_length": max_length,
            "truncated": tokenized.truncated,
            "dropped_no_answer_left": tokenized.dropped_no_answer_left,
            "fallback_chat_template": added_template,
        },
        "environment": hardware.environment(precision),
    }


def write_results(stage: Path, run_name: str, config: SFTConfig, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    atomic.write_json(stage / "metrics.json", metrics)
    atomic.write_json(stage / "samples.json", samples)
    report.write_report(stage, run_name=run_name, config=config.model_dump(), metrics=metrics, samples=samples)


def split_rows(data: InstructionData, config: SFTConfig) -> tuple[list[dict], list[dict]]:
    rows = list(data.rows)
    random.Random(config.seed).shuffle(rows)
    if config.eval_data:
        eval_rows = load_instructions(config.eval_data, data.format, config.encoding).rows
        train_rows = rows
    else:
        if len(rows) < 2:
            raise TunelabError(f"{data.source} has only {len(rows)} usable row(s)", "give at least 2 (one is held out for evaluation), or pass --eval-data")
        n_eval = max(1, round(len(rows) * config.eval_fraction))
        eval_rows, train_rows = rows[:n_eval], rows[n_eval:]
    if config.max_train_samples:
        train_rows = train_rows[: config.max_train_samples]
    return train_rows, eval_rows


def choose_max_length(config: SFTConfig, tokenizer, rows: list[dict], limit: int) -> int:
    if config.max_length is not None:
        if config.max_length > limit:
            raise TunelabError(f"--max-length {config.max_length} exceeds the model's context of {limit} tokens", f"use at most {limit}")
        return config.max_length
    # Answers cut off teach the model to stop mid-sentence, so keep the longest example when affordable.
    return min(max(full_lengths(tokenizer, rows)), MAX_LENGTH_CAP, limit)


def with_lora(model, config: SFTConfig):
    from peft import LoraConfig, TaskType, get_peft_model

    targets = config.target_modules
    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if isinstance(targets, list):
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [t for t in targets if t not in names]
        if unknown:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise TunelabError(f"target module '{unknown[0]}' is not in this model", f"its linear layers are: {', '.join(linear)}")
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls a renamed transformers method
        return get_peft_model(model, lora)


def make_collator(tokenizer, packing: bool):
    if packing:
        # One row per batch, position ids restarting at each example and no attention mask:
        # transformers then masks attention block-diagonally, so examples never see each other.
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=IGNORE)


def training_arguments(config: SFTConfig, output_dir: Path, precision: str, train_rows: int) -> TrainingArguments:
    steps_per_epoch = max(1, math.ceil(train_rows / (config.batch_size * config.grad_accum)))
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup,  # transformers 5: below 1 it is a fraction of the steps
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="epoch",
        prediction_loss_only=True,  # evaluation wants the loss; gathering every logit would cost gigabytes
        activation_checkpointing=config.activation_checkpointing,
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=config.logging_steps or max(1, steps_per_epoch // 20),
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
        length_column_name="length",
        remove_unused_columns=True,
        report_to=config.report_to or "none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _loss_record(metrics: dict[str, float]) -> dict[str, float]:
    loss = float(metrics["eval_loss"])
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
