"""Fine-tuning an encoder for token classification (NER): the recipe, top to bottom.

set up -> load tagged sentences -> split by group (seeded) -> (resuming: the last checkpoint) -> tokenizer -> max length -> profile -> model
(a tag per token) -> plan -> stage -> tokenize, each word's tag on its first word piece (-100 on the
rest) -> Trainer -> train, keeping the epoch with the best entity micro-F1 on the eval split -> (main
process:) save -> evaluate on the test split -> publish the run directory.

The steps every encoder task shares are training/trainer_setup.py's; what differs is the targets,
the head (AutoModelForTokenClassification), the collator (it pads labels with -100) and the per-epoch metric.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification  # noqa: E402

from tunelab import atomic  # noqa: E402
from tunelab.config import TokenClassificationConfig  # noqa: E402
from tunelab.data.token_tags import IGNORED, load_tagged_splits, profile_tagged, tag_vocabulary, tokenize_tagged  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.evaluation.token_metrics import entity_scores  # noqa: E402
from tunelab.run import Run  # noqa: E402
from tunelab.runtime.tagger import TASK  # noqa: E402
from tunelab.training import trainer_setup  # noqa: E402
from tunelab.training.classify import resolve_class_weights  # noqa: E402
from tunelab.training.resume import resume_point  # noqa: E402
from tunelab.training.trainer import AccuracyTrainer  # noqa: E402


def train_token_classifier(config: TokenClassificationConfig, progress: bool = True, resume: bool = False) -> Run:
    """Fine-tune config.model to tag the words of config.data; return the finished run directory.
    With resume, training continues from the last checkpoint that a killed run left in its staging folder."""
    setup = trainer_setup.start_run(config)
    splits = load_tagged_splits(config)  # tagged sentences, checked (tokens vs tags, the IOB rule), split by group (seeded)
    point = resume_point(setup.staging, config.epochs, setup.processes) if resume else None
    checkpoint = point.checkpoint if point else None
    tags = tag_vocabulary([splits["train"]])
    tag2id = {tag: i for i, tag in enumerate(tags)}
    # Checked before anything is planned or staged; each word's tag is what its first piece carries into the loss.
    class_weights = resolve_class_weights(config.class_weights, [tag2id[tag] for sentence in splits["train"]["tags"] for tag in sentence], tags)
    pretrained = trainer_setup.load_pretrained(config)
    if not pretrained.tokenizer.is_fast:
        raise TunelabError(f"model '{config.model}' has no fast tokenizer, which token classification needs to align tags to word pieces", "use another model")
    max_length = trainer_setup.text_max_length(config, pretrained, splits["train"]["text"])
    profile = {**profile_tagged(splits, pretrained.tokenizer, pretrained.limit), "max_length": max_length}
    lr = trainer_setup.resolve_lr(config.lr, pretrained.config)
    # A fresh linear layer over each token's state; id2label in config.json is what
    # transformers.pipeline("token-classification") reads.
    with trainer_setup.quiet_new_head():
        model = AutoModelForTokenClassification.from_pretrained(
            pretrained.folder, num_labels=len(tags), id2label=dict(enumerate(tags)), label2id=tag2id, **trainer_setup.layer_kwargs(config.layers)
        )
    plan = trainer_setup.plan_batch(config, model, pretrained.config, max_length, setup)
    if progress and setup.is_main:
        trainer_setup.print_plan(config, splits, tags, max_length, lr, setup, plan, point)
    trainer_setup.stage_run(setup, config, splits, tags, profile, checkpoint, max_length=max_length, batch_size=plan.batch_size, lr=lr)
    # A word's tag on its first piece, -100 (ignored by the loss) on the others.
    datasets = {name: tokenize_tagged(splits[name], pretrained.tokenizer, max_length, tag2id) for name in ("train", "eval")}
    args = trainer_setup.training_arguments(config, setup, plan.batch_size, lr, len(datasets["train"]), best_metric="f1_micro")
    trainer = trainer_setup.build_trainer(
        TagAccuracyTrainer,
        config,
        setup,
        args,
        model,
        datasets,
        pretrained.tokenizer,
        progress,
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        class_weights=class_weights,
        compute_metrics=lambda prediction: entity_f1(prediction, tags),
        data_collator=DataCollatorForTokenClassification(pretrained.tokenizer, pad_to_multiple_of=8),
    )
    trained = trainer_setup.train_timed(trainer, checkpoint)
    if setup.is_main:  # launched by torchrun (--nproc), every process trains and the main one writes the run
        save_and_evaluate(config, setup, trainer, trainer_setup.training_metrics(trainer, trained, setup), progress)
    setup.state.wait_for_everyone()
    return Run.open(setup.out)


def save_and_evaluate(config: TokenClassificationConfig, setup: trainer_setup.RunSetup, trainer, facts: dict, progress: bool) -> None:
    """model/, metrics.json with the training facts, the test-split evaluation and report; then publish."""
    trainer_setup.save_model(trainer, setup.staging / "model")
    atomic.write_json(setup.staging / "metrics.json", {"task": TASK, **facts})
    from tunelab.evaluation.token_pipeline import evaluate_token_run

    evaluate_token_run(Run(setup.staging), progress=progress, baseline=config.baseline)
    trainer_setup.publish_run(setup, config.overwrite)


class TagAccuracyTrainer(AccuracyTrainer):
    """The classifier's Trainer (length-window sampler, layer-wise decay, tag loss weights, accuracy from the
    training batches), with accuracy counted over the word pieces that carry a tag (labels not -100)."""

    def count_right(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        tagged = labels != IGNORED
        super().count_right(predicted[tagged], labels[tagged])


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
