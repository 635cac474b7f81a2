"""Fine-tuning an encoder for multi-label classification: the recipe, top to bottom.

load label sets -> split (by rarest label, seeded) -> tokenizer -> max length -> profile -> tokenize
with multi-hot targets -> model (a sigmoid per label) -> Trainer -> train -> save model -> choose each
label's threshold on the eval split -> evaluate on the test split -> publish the run directory.

The classifier recipe's pieces (model, arguments, plan, metrics) are reused from training/classify.py;
what differs is the targets, the loss (binary cross-entropy per label, transformers'
problem_type="multi_label_classification") and the thresholds.
"""

from __future__ import annotations

import os
import shutil
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback, Trainer  # noqa: E402

from tunelab import atomic, hardware  # noqa: E402
from tunelab.callbacks import HistoryCallback, RichProgressCallback, quiet_libraries  # noqa: E402
from tunelab.config import MultiLabelConfig, to_yaml  # noqa: E402
from tunelab.data.multilabel import label_vocabulary, load_multilabel_splits, multi_hot, profile_label_sets  # noqa: E402
from tunelab.data.tokenize import choose_max_length, token_lengths, tokenize_frame  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.models.catalogue import resolve_model  # noqa: E402
from tunelab.models.classifier import Classifier, model_max_length  # noqa: E402
from tunelab.models.multilabel import TASK, choose_thresholds, sigmoid, write_thresholds  # noqa: E402
from tunelab.run import Run, refuse_existing, start_staging  # noqa: E402
from tunelab.training import memory  # noqa: E402
from tunelab.training.classify import (  # noqa: E402
    build_model,
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


def train_multilabel(config: MultiLabelConfig, progress: bool = True) -> Run:
    """Fine-tune config.model to predict label sets of config.data; return the finished run directory."""
    quiet_libraries()
    out = resolve_out_dir(config)
    staging = atomic.partial_path(out)
    refuse_existing(out, config.overwrite)
    check_integrations(config.report_to)
    transformers.set_seed(config.seed)
    threads = hardware.set_threads(config.threads)
    precision = hardware.resolve_precision(config.precision)

    # 1. Data: label sets, checked, split by rarest label (seeded).
    splits, dropped = load_multilabel_splits(config)
    labels = label_vocabulary([splits["train"]])

    # 2. Tokenizer, and a max length chosen from the data rather than the model's 512.
    model_dir = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_config = transformers.AutoConfig.from_pretrained(model_dir)
    model_limit = model_max_length(model_config, tokenizer)
    if config.max_length is not None and config.max_length > model_limit:
        raise TunelabError(f"--max-length {config.max_length} exceeds the model's limit of {model_limit} tokens", f"use at most {model_limit}")
    max_length = config.max_length or choose_max_length(
        token_lengths(tokenizer, splits["train"]["text"], seed=config.seed), model_limit, config.length_percentile
    )
    profile = profile_label_sets(splits, tokenizer, model_limit, dropped)
    profile["max_length"] = max_length
    lr = resolve_lr(config.lr, model_config)

    # 3. Model: the pretrained encoder with a fresh head of one logit per label, trained with
    # binary cross-entropy (saved in config.json, so every loader knows the outputs are sigmoids).
    model = build_model(model_dir, config, labels)
    model.config.problem_type = "multi_label_classification"
    parameters, trainable = sum(p.numel() for p in model.parameters()), count_trainable(model)
    batch_size = config.batch_size
    if batch_size == "auto":
        batch_size = memory.largest_batch(model_config, parameters, trainable, max_length, precision, int(0.6 * memory.available_memory()))
    plan = memory.estimate(model_config, parameters, trainable, batch_size, max_length, precision)
    memory.check_disk(out.parent, parameters, trainable, config.keep_checkpoints)
    if progress:
        print_plan(config, splits, labels, max_length, batch_size, lr, precision, 1, parameters, trainable, plan)

    # 4. Stage the run directory with everything known before training.
    resolved = dict(out=str(out), max_length=max_length, precision=precision, threads=threads, batch_size=batch_size, lr=lr)
    start_staging(staging, to_yaml(config, **resolved), splits, labels, profile)

    # 5. Tokenize; targets are multi-hot float vectors, as BCEWithLogitsLoss takes them.
    datasets = {name: tokenize_multilabel(split, tokenizer, max_length, labels) for name, split in splits.items() if name != "test"}

    # 6. Trainer: the classifier's arguments, keeping the epoch with the lowest eval loss (the
    # thresholds come later, so the ranking the loss measures is what matters).
    args = training_arguments(config, staging / "checkpoints", precision, batch_size, lr, len(datasets["train"]))
    args.metric_for_best_model, args.greater_is_better = "loss", False
    callbacks = [HistoryCallback(staging / "history.jsonl")]
    if progress:
        callbacks.append(RichProgressCallback(batch_size * config.grad_accum))
    if config.early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping))
    trainer = SubsetAccuracyTrainer(
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=multilabel_scores,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)

    # 7. Train; the best checkpoint by eval loss is loaded at the end.
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started

    # 8. Save; choose each label's threshold on the eval split; evaluate on test; publish.
    facts = training_metrics(trainer, result, train_seconds, precision, 1)
    facts["train"]["best_eval_loss"] = facts["train"].pop("best_eval_accuracy")  # what metric_for_best_model kept
    save_model(trainer, staging / "model")
    thresholds = thresholds_on_eval(Classifier.load(staging / "model", max_length), splits["eval"], labels, config.eval_batch_size)
    write_thresholds(staging, thresholds)
    atomic.write_json(staging / "metrics.json", {"task": TASK, **facts, "thresholds": thresholds})
    from tunelab.evaluate.multilabel_pipeline import evaluate_multilabel_run

    evaluate_multilabel_run(Run(staging), progress=progress, baseline=config.baseline)
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)
    atomic.publish_dir(staging, out, overwrite=config.overwrite)
    return Run.open(out)


def tokenize_multilabel(frame, tokenizer, max_length: int, labels: list[str]):
    """The classifier's tokenized dataset, with `labels` as multi-hot float rows."""
    dataset = tokenize_frame(frame, tokenizer, max_length, None)
    return dataset.add_column("labels", multi_hot(frame["labels"], labels).tolist())


def thresholds_on_eval(classifier: Classifier, eval_split, labels: list[str], batch_size: int) -> dict:
    """Each label's decision threshold, chosen on the eval split's probabilities (the test split is never seen)."""
    proba = sigmoid(classifier.logits(eval_split["text"].astype(str).tolist(), batch_size))
    return choose_thresholds(multi_hot(eval_split["labels"], labels), proba, labels, f"the eval split ({len(eval_split)} rows)")


class SubsetAccuracyTrainer(AccuracyTrainer):
    """The classifier's Trainer (length-window sampler, accuracy logged from the training batches),
    with accuracy meaning subset accuracy: a row counts when every label is right at threshold 0.5."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if labels is not None and model.training:
            exact = ((outputs.logits.detach() > 0) == (labels > 0.5)).all(dim=-1)
            counts = torch.tensor([exact.sum().item(), exact.numel()], dtype=torch.float64)
            self._window += counts
            self._epoch += counts
        return (loss, outputs) if return_outputs else loss


def multilabel_scores(eval_prediction) -> dict[str, float]:
    """compute_metrics for per-epoch evaluation at threshold 0.5: subset accuracy (as `accuracy`) and micro-F1."""
    logits, targets = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = (np.asarray(logits) > 0).astype(int)
    targets = (np.asarray(targets) > 0.5).astype(int)
    return {"accuracy": float(accuracy_score(targets, predicted)), "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0))}
