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
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from tunelab import atomic, hardware  # noqa: E402
from tunelab.callbacks import HistoryCallback, RichProgressCallback, quiet_libraries  # noqa: E402
from tunelab.config import to_yaml  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.lm import report  # noqa: E402
from tunelab.lm.config import SFTConfig  # noqa: E402
from tunelab.lm.data import InstructionData, load_instructions, prompt_of  # noqa: E402
from tunelab.lm.generate import generate_samples  # noqa: E402
from tunelab.lm.load import context_limit, resolve_lm  # noqa: E402
from tunelab.lm.tokenize import IGNORE, ensure_chat_template, full_lengths, tokenize_rows  # noqa: E402
from tunelab.lm.trainer import AnswerOnlyTrainer, supports_logits_to_keep  # noqa: E402
from tunelab.run import Run, named_after, out_dir, refuse_existing  # noqa: E402

MAX_LENGTH_CAP = 1024  # the default limit; CPU attention cost grows with the square of the length


def sft(config: SFTConfig, progress: bool = True) -> Run:
    """Fine-tune config.model on config.data; returns the finished run."""
    quiet_libraries()
    out = out_dir(config.out, named_after(config.model, config.data, prefix="sft-"))
    refuse_existing(out, config.overwrite)
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    precision = hardware.resolve_precision(config.precision)

    # 1. Data, checked before anything expensive; an eval split held out (seeded).
    data = load_instructions(config.data, config.format, config.encoding)
    train_rows, eval_rows = split_rows(data, config)

    # 2. Tokenizer with a chat template, and a max length taken from the data.
    source = resolve_lm(config.model)
    if source.adapter is not None:
        raise TunelabError(f"'{config.model}' is a LoRA adapter", "merge it first (`tunelab lm merge`) and fine-tune the merged folder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(source.base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    added_template = ensure_chat_template(tokenizer)
    model_config = transformers.AutoConfig.from_pretrained(source.base)
    limit = context_limit(model_config)
    max_length = choose_max_length(config, tokenizer, train_rows, limit)

    # 3. Tokenize: answers are labelled, prompts are -100.
    train_set, train_counts = tokenize_rows(tokenizer, train_rows, max_length)
    eval_set, eval_counts = tokenize_rows(tokenizer, eval_rows, max_length)
    if len(train_set) == 0 or len(eval_set) == 0:
        raise TunelabError(f"no examples left after truncating to {max_length} tokens", "raise --max-length")

    # 4. Model (float32 weights; bf16 is autocast by the Trainer).
    model = transformers.AutoModelForCausalLM.from_pretrained(source.base, dtype=torch.float32)
    model.config.use_cache = False  # training needs no cache, and packing needs none to keep examples apart
    sample_prompts = [prompt_of(row) for row in eval_rows[: config.samples]]
    samples_before = generate_samples(model, tokenizer, [p for p, _ in sample_prompts], config.sample_tokens, precision)
    if config.method == "lora":
        model = with_lora(model, config)

    out_staging = atomic.partial_path(out)
    if out_staging.exists():
        shutil.rmtree(out_staging)  # a crashed earlier attempt; start clean
    with atomic.staged_dir(out, overwrite=config.overwrite, keep_partial=False) as stage:
        atomic.write_text(
            stage / "config.yaml",
            # Only real settings, resolved: the file reloads as an SFTConfig to repeat the run.
            to_yaml(config, out=str(out), lr=config.learning_rate, max_length=max_length, precision=precision, threads=threads),
        )

        # 5. Trainer.
        args = training_arguments(config, stage / "checkpoints", precision, len(train_set))
        callbacks: list = [HistoryCallback(stage / "history.jsonl")]
        if progress:
            callbacks.append(RichProgressCallback(config.batch_size * config.grad_accum * args.world_size))
        # Answer-only logits where the model allows it: same loss, a fraction of the memory and time.
        trainer_class = AnswerOnlyTrainer if config.answer_only_logits and supports_logits_to_keep(model) else Trainer
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set.remove_columns("length"),
            processing_class=tokenizer,
            data_collator=make_collator(tokenizer, config.packing),
            callbacks=callbacks,
        )
        trainer.remove_callback(PrinterCallback)

        # 6. Eval loss before, train, eval loss after.
        before = trainer.evaluate()
        started = time.perf_counter()
        result = trainer.train()
        train_seconds = time.perf_counter() - started
        after = trainer.evaluate()
        samples_after = generate_samples(trainer.model, tokenizer, [p for p, _ in sample_prompts], config.sample_tokens, precision)

        # 7. Save: the adapter (small; it names its base folder) or the full model, with the tokenizer.
        model_dir = stage / "model"
        trainer.model.config.use_cache = True
        trainer.model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        shutil.rmtree(stage / "checkpoints", ignore_errors=True)

        trained_tokens = sum(train_set["length"])
        samples = [
            {"prompt": prompt, "reference": reference, "before": b, "after": a}
            for (prompt, reference), b, a in zip(sample_prompts, samples_before, samples_after)
        ]
        metrics: dict[str, Any] = {
            "eval_before": _loss_record(before),
            "eval_after": _loss_record(after),
            "train": {
                "method": config.method,
                "train_runtime_s": train_seconds,
                "train_loss": result.metrics.get("train_loss"),
                "train_examples": len(train_set),
                "eval_examples": len(eval_set),
                "epochs": result.metrics.get("epoch", config.epochs),
                "steps": result.global_step,
                "train_tokens_per_second": trained_tokens * config.epochs / train_seconds if train_seconds > 0 else None,
                "peak_memory_mb": hardware.peak_memory_mb(),
                "parameters": sum(p.numel() for p in trainer.model.parameters()),
                "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            },
            "data": {
                "source": data.source,
                "format": data.format,
                "rows": len(data.rows),
                "dropped_empty": data.dropped.get("empty", 0),
                "max_length": max_length,
                "truncated": train_counts["truncated"] + eval_counts["truncated"],
                "dropped_no_answer_left": train_counts["no_answer_left"] + eval_counts["no_answer_left"],
                "fallback_chat_template": added_template,
            },
            "environment": hardware.environment(precision),
        }
        atomic.write_json(stage / "metrics.json", metrics)
        atomic.write_json(stage / "samples.json", samples)
        report.write_report(stage, run_name=out.name, config=config.model_dump(), metrics=metrics, samples=samples)
    return Run.open(out)


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
