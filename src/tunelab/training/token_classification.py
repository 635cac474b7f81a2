"""Fine-tuning an encoder for token classification (NER): the recipe, top to bottom.

load tagged sentences -> split by group (seeded) -> tokenizer -> max length -> profile -> tokenize,
each word's tag on its first word piece (-100 on the rest) -> model (a tag per token) -> Trainer ->
train, keeping the epoch with the best entity micro-F1 on the eval split -> save -> evaluate on the
test split -> publish the run directory.

The classifier recipe's pieces (arguments, plan, learning rate, training facts, saving) are reused
from training/classify.py; what differs is the targets, the head and the per-epoch metric.
"""

from __future__ import annotations

import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, EarlyStoppingCallback, PrinterCallback  # noqa: E402

from tunelab import atomic, hardware  # noqa: E402
from tunelab.callbacks import HistoryCallback, RichProgressCallback, quiet_libraries  # noqa: E402
from tunelab.config import TokenClassificationConfig, to_yaml  # noqa: E402
from tunelab.data.token_tags import IGNORED, load_tagged_splits, profile_tagged, tag_vocabulary, tokenize_tagged  # noqa: E402
from tunelab.data.tokenize import choose_max_length, token_lengths  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.evaluate.token_metrics import entity_scores  # noqa: E402
from tunelab.models.catalogue import resolve_model  # noqa: E402
from tunelab.models.classifier import model_max_length  # noqa: E402
from tunelab.run import Run, refuse_existing, start_staging  # noqa: E402
from tunelab.runtime.tagger import TASK  # noqa: E402
from tunelab.training import memory  # noqa: E402
from tunelab.training.classify import (  # noqa: E402
    check_integrations,
    count_trainable,
    print_plan,
    resolve_lr,
    resolve_out_dir,
    save_model,
    training_arguments,
    training_metrics,
)
from tunelab.training.trainer import AccuracyTrainer  # noqa: E402


def train_token_classifier(config: TokenClassificationConfig, progress: bool = True) -> Run:
    """Fine-tune config.model to tag the words of config.data; return the finished run directory."""
    quiet_libraries()
    out = resolve_out_dir(config)
    staging = atomic.partial_path(out)
    refuse_existing(out, config.overwrite)
    check_integrations(config.report_to)
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    precision = hardware.resolve_precision(config.precision)

    # 1. Data: tagged sentences, checked (tokens vs tags, the IOB rule), split by group (seeded).
    splits = load_tagged_splits(config)
    tags = tag_vocabulary([splits["train"]])
    tag2id = {tag: i for i, tag in enumerate(tags)}

    # 2. Tokenizer (a fast one: word_ids() maps pieces to words), and a max length from the data.
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.is_fast:
        raise TunelabError(f"model '{config.model}' has no fast tokenizer, which token classification needs to align tags to word pieces", "use another model")
    model_config = transformers.AutoConfig.from_pretrained(model_dir)
    model_limit = model_max_length(model_config, tokenizer)
    if config.max_length is not None and config.max_length > model_limit:
        raise TunelabError(f"--max-length {config.max_length} exceeds the model's limit of {model_limit} tokens", f"use at most {model_limit}")
    max_length = config.max_length or choose_max_length(
        token_lengths(tokenizer, splits["train"]["text"], seed=config.seed), model_limit, config.length_percentile
    )
    profile = profile_tagged(splits, tokenizer, model_limit)
    profile["max_length"] = max_length
    lr = resolve_lr(config.lr, model_config)

    # 3. Model: the pretrained encoder with a fresh linear layer over each token's state; id2label
    # in config.json is what transformers.pipeline("token-classification") reads.
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the fresh head's "newly initialized" report is expected
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            model_dir, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id=tag2id, ignore_mismatched_sizes=True
        )
    finally:
        transformers.logging.set_verbosity(level)
    parameters, trainable = sum(p.numel() for p in model.parameters()), count_trainable(model)
    batch_size = config.batch_size
    if batch_size == "auto":
        batch_size = memory.largest_batch(model_config, parameters, trainable, max_length, precision, int(0.6 * memory.available_memory()))
    plan = memory.estimate(model_config, parameters, trainable, batch_size, max_length, precision)
    memory.check_disk(out.parent, parameters, trainable, config.keep_checkpoints)
    if progress:
        print_plan(config, splits, tags, max_length, batch_size, lr, precision, 1, parameters, trainable, plan)

    # 4. Stage the run directory with everything known before training (labels.json: the tags).
    resolved = dict(out=str(out), max_length=max_length, precision=precision, threads=threads, batch_size=batch_size, lr=lr)
    start_staging(staging, to_yaml(config, **resolved), splits, tags, profile)

    # 5. Tokenize; a word's tag on its first piece, -100 (ignored by the loss) on the others.
    datasets = {name: tokenize_tagged(splits[name], tokenizer, max_length, tag2id) for name in ("train", "eval")}

    # 6. Trainer: the classifier's arguments, keeping the epoch with the best entity micro-F1 on eval.
    args = training_arguments(config, staging / "checkpoints", precision, batch_size, lr, len(datasets["train"]))
    args.metric_for_best_model, args.greater_is_better = "f1_micro", True
    callbacks = [HistoryCallback(staging / "history.jsonl")]
    if progress:
        callbacks.append(RichProgressCallback(batch_size * config.grad_accum))
    if config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping))
    trainer = TagAccuracyTrainer(
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8),
        compute_metrics=lambda prediction: entity_f1(prediction, tags),
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)

    # 7. Train; the best checkpoint by eval entity F1 is loaded at the end.
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started

    # 8. Save; evaluate on test; publish.
    facts = training_metrics(trainer, result, train_seconds, precision, 1)
    facts["train"]["best_eval_f1_micro"] = facts["train"].pop("best_eval_accuracy")  # what metric_for_best_model kept
    save_model(trainer, staging / "model")
    atomic.write_json(staging / "metrics.json", {"task": TASK, **facts})
    from tunelab.evaluate.token_pipeline import evaluate_token_run

    evaluate_token_run(Run(staging), progress=progress, baseline=config.baseline)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    atomic.publish_dir(staging, out, overwrite=config.overwrite)
    return Run.open(out)


class TagAccuracyTrainer(AccuracyTrainer):
    """The classifier's Trainer (length-window sampler, layer-wise decay, accuracy from the training
    batches), with accuracy counted over the word pieces that carry a tag (labels not -100)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        loss, outputs = transformers.Trainer.compute_loss(self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if labels is not None and model.training:
            tagged = labels != IGNORED
            right = (outputs.logits.detach().argmax(dim=-1) == labels) & tagged
            counts = torch.tensor([right.sum().item(), tagged.sum().item()], dtype=torch.float64)
            self._window += counts
            self._epoch += counts
        return (loss, outputs) if return_outputs else loss


def entity_f1(eval_prediction, tags: list[str]) -> dict[str, float]:
    """compute_metrics for per-epoch evaluation: entity micro-F1 (seqeval) and word accuracy over each word's first piece."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = np.asarray(logits).argmax(axis=-1)
    true_tags, predicted_tags = [], []
    for row_labels, row_predicted in zip(np.asarray(labels), predicted):
        tagged = row_labels != IGNORED
        true_tags.append([tags[i] for i in row_labels[tagged]])
        predicted_tags.append([tags[i] for i in row_predicted[tagged]])
    words = sum(len(t) for t in true_tags)
    right = sum(a == b for t, p in zip(true_tags, predicted_tags) for a, b in zip(t, p))
    return {"f1_micro": entity_scores(true_tags, predicted_tags)["f1_micro"], "word_accuracy": right / max(1, words)}
