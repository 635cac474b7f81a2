"""The steps every encoder fine-tuning task shares: set-up, the Trainer, its arguments and metrics, publishing.

`tunelab train` (training/classify.py, single texts and text pairs), multi-label (training/multilabel.py),
token classification (training/token_classification.py) and extractive QA (training/extractive_qa.py) are
each a short list of these steps around what is their own: the data, tokenizing, the model's head,
`compute_metrics`, and what is scored after training.

A new task gives its config the Trainer settings by subclassing
`config.TrainerSettings` (or `TrainConfig`, to get the classifier's too), then:

    setup = start_run(config)                        # refuse an existing run, seed, threads, precision, process group
    pretrained = load_pretrained(config)             # tokenizer, model config, the model's token limit
    lr = resolve_lr(config.lr, pretrained.config)
    ... its own splits, max length, datasets (train and eval) and model ...
    stage_run(setup, config, splits, labels, profile, max_length=max_length, lr=lr, ...)   # config.yaml, splits/, labels.json
    args = training_arguments(config, setup, batch_size, lr, len(datasets["train"]), best_metric="loss")
    trainer = build_trainer(TheTrainerClass, config, setup, args, model, datasets, tokenizer, progress, compute_metrics=...)
    trained = train_timed(trainer)
    if setup.is_main:                                  # under torchrun (`--nproc`) every process trains; one writes
        facts = training_metrics(trainer, trained, setup)  # metrics.json's "train" and "environment"
        save_model(trainer, setup.staging / "model")
        ... its own test scores and metrics.json ...
        publish_run(setup, config.overwrite)
    setup.state.wait_for_everyone()

`--resume` hands the task's `resume.resume_point(setup.staging, config.epochs, setup.processes)` checkpoint to `stage_run`
and `train_timed`, and says which it is (`print_plan`'s `resuming`).

The memory plan (`plan_batch`, `print_plan`) and `build_classifier` fit any task with a
sequence-classification-shaped model; a task with another head builds its model itself, inside
`quiet_new_head()`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from rich.console import Console  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding, PrinterCallback, TrainingArguments  # noqa: E402

from tunelab import atomic, hardware, hf_trainer  # noqa: E402
from tunelab.callbacks import quiet_libraries, trainer_callbacks  # noqa: E402
from tunelab.config import TrainConfig, TrainerSettings, describe_recipe, to_yaml  # noqa: E402
from tunelab.data.tokenize import choose_max_length, token_lengths  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.eta import steps_to_measure  # noqa: E402
from tunelab.hf_trainer import Trained, count_trainable  # noqa: E402
from tunelab.hf_trainer import train_timed as train_timed  # noqa: E402  one of the steps a task calls through this module
from tunelab.models.catalogue import resolve_model  # noqa: E402
from tunelab.models.classifier import model_max_length  # noqa: E402
from tunelab.models.pooling import new_classifier  # noqa: E402
from tunelab.run import named_after, out_dir, refuse_existing, start_staging  # noqa: E402
from tunelab.training import memory  # noqa: E402
from tunelab.training.resume import ResumePoint, record_processes, truncate_history  # noqa: E402

# The share of the free memory `--batch-size auto` plans to fill: the rest absorbs what the estimate
# (training/memory.py) leaves out — allocator slack, the tokenizer, the evaluation batches.
MEMORY_BUDGET = 0.6


@dataclass(frozen=True)
class RunSetup:
    """Where a run is written and what the machine resolved for it; `state` is accelerate's view of the processes."""

    out: Path
    staging: Path
    threads: int
    precision: str
    state: Any  # accelerate.PartialState

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def processes(self) -> int:
        return self.state.num_processes


def start_run(config: TrainerSettings) -> RunSetup:
    """Everything decided before the data is read: the run folder (an existing run refused), the
    experiment trackers checked, the process group joined, seed, threads and precision set."""
    from accelerate import PartialState

    quiet_libraries()
    out = resolve_out_dir(config)
    refuse_existing(out, config.overwrite)
    check_integrations(config.report_to)
    # Joins the process group when launched by torchrun / accelerate (gloo on CPU), as the Trainer will.
    state = PartialState(cpu=not torch.cuda.is_available())
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    return RunSetup(out, atomic.partial_path(out), threads, hardware.resolve_precision(config.precision), state)


def resolve_out_dir(config: TrainerSettings) -> Path:
    # launch.py names the folder before it starts the processes, so that every process trains into the same one.
    return out_dir(config.out, named_after(config.model, config.data))


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


@dataclass(frozen=True)
class Pretrained:
    """The model to fine-tune, before a head is put on it."""

    folder: Path
    tokenizer: Any
    config: Any  # transformers.PretrainedConfig
    limit: int  # the longest input it takes, in tokens


def load_pretrained(config: TrainerSettings) -> Pretrained:
    """The model's folder, tokenizer and config (with --layers applied); a --max-length beyond the model's limit,
    or --layers beyond its layer count, is refused here."""
    folder = resolve_model(config.model)
    tokenizer = with_pad_token(AutoTokenizer.from_pretrained(folder), config.model)
    check_layers(config.layers, transformers.AutoConfig.from_pretrained(folder), config.model)
    # The config the model will be built with: the memory plan and the learning rate read it.
    model_config = transformers.AutoConfig.from_pretrained(folder, **layer_kwargs(config.layers))
    limit = model_max_length(model_config, tokenizer)
    if config.max_length is not None and config.max_length > limit:
        raise TunelabError(f"--max-length {config.max_length} exceeds the model's limit of {limit} tokens", f"use at most {limit}")
    return Pretrained(folder, tokenizer, model_config, limit)


def with_pad_token(tokenizer, model_name: str):
    """The tokenizer, padding with its end-of-text token when it has no pad token (causal LMs such as Llama and GPT-2
    ship without one; their end-of-text token is the usual pad). Batches are padded, so a tokenizer with neither is refused."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TunelabError(
                f"model '{model_name}': its tokenizer has neither a pad token nor an end-of-text token to pad batches with",
                "add a pad_token to the model folder's tokenizer_config.json",
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_layers(layers: int | None, model_config, model: str) -> None:
    """--layers must keep between 1 and all of the model's transformer layers; else one line naming how many it has."""
    if layers is None:
        return
    total = getattr(model_config, "num_hidden_layers", None)
    if total is None:
        raise TunelabError(
            f"--layers: model '{model}' does not say how many transformer layers it has (no num_hidden_layers in its config)", "leave --layers out"
        )
    if not 1 <= layers <= total:
        raise TunelabError(
            f"--layers {layers} is out of range: model '{model}' has {total} transformer layers", f"use 1 to {total}, or leave --layers out to keep all"
        )


def layer_kwargs(layers: int | None) -> dict[str, int]:
    """The from_pretrained keyword that keeps the pretrained model's first `layers` transformer layers ({}: all of them).

    Every model built for training passes it (`build_classifier`, the token and span heads), and `load_pretrained`'s config
    too. The model is built with that many layers and the checkpoint's weights are loaded by name, so layers 0..N-1 keep
    their pretrained weights and the higher ones are left out (transformers reports them as unused weights, which
    `quiet_new_head` hides); the saved model/config.json then says N layers, so every later stage loads it unchanged.
    Dropping the top layers keeps most of the accuracy (Sajjad et al. 2020, "On the effect of dropping layers of
    pre-trained transformer models"); benchmarks/layers_dev.py measured it on tweets.
    """
    return {} if layers is None else {"num_hidden_layers": layers}


def text_max_length(config: TrainConfig, pretrained: Pretrained, texts) -> int:
    """--max-length, else the length_percentile of the training texts' token lengths (a seeded sample), capped by the model."""
    if config.max_length:
        return config.max_length
    return choose_max_length(token_lengths(pretrained.tokenizer, texts, seed=config.seed), pretrained.limit, config.length_percentile)


def resolve_lr(lr: float | str, model_config) -> float:
    """`auto`: 5e-5 (the usual rate for 768-wide BERT-base) times 768 / the model's width, within
    [1e-5, 1e-3]. Adam's best rate falls roughly as 1 / width, so narrow models want more: MiniLM
    (384 wide) gets 1e-4, which on tweets (600 examples, 2 epochs, 3 seeds) scored 0.680 against
    0.630 at 5e-5 (benchmarks/results/ablate_recipe-tweets-lr.jsonl)."""
    if lr != "auto":
        return float(lr)
    width = getattr(model_config, "hidden_size", None) or 768
    return float(min(1e-3, max(1e-5, 5e-5 * 768 / width)))


# model -----------------------------------------------------------------------------------------
@contextmanager
def quiet_new_head() -> Iterator[None]:
    """The encoder's pooler/head weights are replaced on purpose: hide the long "newly initialized" report."""
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def build_classifier(model_dir: Path, config: TrainConfig, labels: list[str], init_head: Callable[[Any], None] | None = None):
    """The pretrained model with a fresh classification head (config.pooling), trained as config.method says.

    A causal LM's `pooling: cls` head is Hugging Face's, e.g. LlamaForSequenceClassification: it reads each row at its
    last token that is not the config's pad token, which the Trainer sets to the tokenizer's (`with_pad_token`) when it
    starts (transformers' `align_special_tokens`).

    init_head: sets the fresh head's weights (e.g. `linear_probe.init_head_from_probe`) before the encoder
    is frozen or LoRA wraps the model, whose copy of the head is taken when it wraps.
    """
    with quiet_new_head():
        model = new_classifier(model_dir, config.pooling, labels, **layer_kwargs(config.layers))
    if init_head is not None:
        init_head(model)
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


# plan ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    parameters: int
    trainable: int
    memory: memory.MemoryPlan


def plan_batch(config: TrainerSettings, model, model_config, max_length: int, setup: RunSetup) -> BatchPlan:
    """The batch size (`auto`: the largest whose estimate fits MEMORY_BUDGET of the free memory), the
    memory it needs per process, and a check that the disk holds the checkpoints."""
    parameters, trainable = sum(p.numel() for p in model.parameters()), count_trainable(model)
    batch_size = config.batch_size
    if batch_size == "auto":
        budget = int(MEMORY_BUDGET * memory.available_memory())
        batch_size = memory.largest_batch(model_config, parameters, trainable, max_length, setup.precision, budget)
    plan = memory.estimate(model_config, parameters, trainable, batch_size, max_length, setup.precision)
    memory.check_disk(setup.out.parent, parameters, trainable, config.keep_checkpoints)
    return BatchPlan(batch_size, parameters, trainable, plan)


def print_plan(config: TrainConfig, splits, labels, max_length: int, lr: float, setup: RunSetup, plan: BatchPlan, resuming: ResumePoint | None = None) -> None:
    """The plan on stderr; for a resumed run (`resuming`, training/resume.resume_point), which checkpoint it continues from."""
    effective = plan.batch_size * config.grad_accum * setup.processes
    steps = max(1, len(splits["train"]) // effective) * config.epochs
    Console(stderr=True).print(
        f"[bold]plan[/]: {config.model} on {config.data} — {len(splits['train'])} train / {len(splits['eval'])} eval / "
        f"{len(splits['test'])} test rows, {len(labels)} classes; recipe {describe_recipe(config)}"
        f"{f'; the first {config.layers} layers' if config.layers else ''}\n"
        f"      max length {max_length}, batch {plan.batch_size} × accumulation {config.grad_accum} × {setup.processes} process(es) "
        f"= {effective}, ≈{steps:.0f} steps, learning rate {lr:g}, {setup.precision}\n"
        f"      parameters {plan.parameters / 1e6:.1f}M ({plan.trainable / 1e6:.1f}M trainable); memory per process {plan.memory.describe()}\n"
        f"      duration: measured over the first {steps_to_measure(int(steps))} steps, then printed and kept up to date on the progress bar",
        highlight=False,
        soft_wrap=True,  # a log file keeps each line whole
    )
    if resuming is not None:
        Console(stderr=True).print(resuming.describe(), highlight=False)


# staging ---------------------------------------------------------------------------------------
def stage_run(
    setup: RunSetup,
    config: TrainerSettings,
    splits: Mapping[str, Any],
    labels: Sequence[str] | None = None,
    profile: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    **resolved: Any,
) -> None:
    """The staging folder with what is known before training: config.yaml (with the values resolved at
    run time, e.g. max_length), splits/, labels.json, data_profile.json, and how many processes train it (which a
    resume keeps). A resumed run (`checkpoint`) keeps its folder, its history cut back to the checkpoint. The main
    process writes; the others wait."""
    if setup.is_main:
        if checkpoint is None:
            config_yaml = to_yaml(config, out=str(setup.out), precision=setup.precision, threads=setup.threads, **resolved)
            start_staging(setup.staging, config_yaml, splits, labels, profile)
            record_processes(setup.staging, setup.processes)
        else:
            truncate_history(setup.staging / "history.jsonl", checkpoint)
    setup.state.wait_for_everyone()


# Trainer ---------------------------------------------------------------------------------------
def training_arguments(
    config: TrainerSettings, setup: RunSetup, batch_size: int, lr: float, train_rows: int, best_metric: str = "accuracy"
) -> TrainingArguments:
    """hf_trainer's arguments for an encoder task: checkpoints every epoch, the best by `best_metric` kept;
    train_rows counts the whole train split (each of `setup.processes` processes trains on its share)."""
    return hf_trainer.training_arguments(
        config,
        setup.staging / "checkpoints",
        batch_size=batch_size,
        lr=lr,
        precision=setup.precision,
        train_rows=train_rows // setup.processes,
        group_by_length=config.group_by_length,
        best_metric=best_metric,
        keep_checkpoints=config.keep_checkpoints,
        auto_find_batch_size=config.batch_size == "auto" and torch.cuda.is_available(),  # halve on GPU OOM
        deepspeed=config.deepspeed,
        fsdp=config.fsdp,
    )


def build_trainer(trainer_class, config: TrainerSettings, setup: RunSetup, args: TrainingArguments, model, datasets, tokenizer, progress: bool, **extra):
    """trainer_class on the train and eval datasets, batches padded to their longest example, with
    history.jsonl, the progress bar and early stopping; `extra` goes to trainer_class (compute_metrics, ...,
    or a data_collator of the task's own, e.g. one that pads per-token labels)."""
    samples_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    extra.setdefault("data_collator", DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        processing_class=tokenizer,
        callbacks=trainer_callbacks(setup.staging / "history.jsonl", samples_per_step if progress else None, config.early_stopping),
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and history.jsonl replace the printed dicts
    return trainer


def training_metrics(trainer, trained: Trained, setup: RunSetup) -> dict:
    """metrics.json's "train" (named best_eval_<metric> after the metric that chose the best epoch) and "environment".

    Call it before save_model: saving merges LoRA adapters into the weights, after which they no longer count as trainable.
    """
    best = trainer.state.best_model_checkpoint
    best_metric = trainer.args.metric_for_best_model.removeprefix("eval_")
    return hf_trainer.training_facts(
        trainer,
        trained,
        setup.precision,
        train_samples_per_second=trained.result.metrics.get("train_samples_per_second"),
        train_samples=len(trainer.train_dataset),
        processes=setup.processes,
        best_checkpoint=Path(best).name if best else None,
        **{f"best_eval_{best_metric}": trainer.state.best_metric},
    )


# publishing ------------------------------------------------------------------------------------
def save_model(trainer, folder: Path) -> None:
    """model/: a plain Hugging Face folder with its tokenizer."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: fold the adapters in so model/ is a plain HF folder
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    trainer.processing_class.save_pretrained(folder)


def publish_run(setup: RunSetup, overwrite: bool) -> None:
    """Drop the checkpoints and move the finished staging folder into place (main process only)."""
    shutil.rmtree(setup.staging / "checkpoints", ignore_errors=True)
    atomic.publish_dir(setup.staging, setup.out, overwrite=overwrite)
