"""Fine-tuning an encoder for multi-label classification: the recipe, top to bottom.

set up -> load label sets -> split (by rarest label, seeded) -> (resuming: the last checkpoint) -> tokenizer -> max length -> profile
-> tokenize with multi-hot targets -> model (a sigmoid per label; head_init linear-probe: started from a one-vs-rest probe) -> plan -> stage -> Trainer -> train -> (main process:) save model
-> choose each label's threshold on the eval split -> evaluate on the test split -> publish the run directory.

The steps every encoder task shares are training/trainer_setup.py's, the classifier's model and plan
among them; what differs is the targets, the loss (binary cross-entropy per label, transformers'
problem_type="multi_label_classification"; with pos_weight sqrt, each label's positives weighted by
the train split's counts) and the thresholds.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from tunelab import atomic  # noqa: E402
from tunelab.config import POS_WEIGHT_MAX, MultiLabelConfig  # noqa: E402
from tunelab.data.multilabel import label_vocabulary, load_multilabel_splits, multi_hot, profile_label_sets  # noqa: E402
from tunelab.data.tokenize import tokenize_frame  # noqa: E402
from tunelab.models.classifier import Classifier  # noqa: E402
from tunelab.models.multilabel import TASK, choose_thresholds, sigmoid, write_thresholds  # noqa: E402
from tunelab.run import Run  # noqa: E402
from tunelab.training import linear_probe, trainer_setup  # noqa: E402
from tunelab.training.resume import resume_point  # noqa: E402
from tunelab.training.trainer import AccuracyTrainer  # noqa: E402


def train_multilabel(config: MultiLabelConfig, progress: bool = True, resume: bool = False) -> Run:
    """Fine-tune config.model to predict label sets of config.data; return the finished run directory.
    With resume, training continues from the last checkpoint that a killed run left in its staging folder."""
    setup = trainer_setup.start_run(config)
    splits, dropped = load_multilabel_splits(config)  # label sets, checked, split by rarest label (seeded)
    point = resume_point(setup.staging, config.epochs, setup.processes) if resume else None
    checkpoint = point.checkpoint if point else None
    labels = label_vocabulary([splits["train"]])
    pretrained = trainer_setup.load_pretrained(config)
    max_length = trainer_setup.text_max_length(config, pretrained, splits["train"]["text"])
    profile = {**profile_label_sets(splits, pretrained.tokenizer, pretrained.limit, dropped), "max_length": max_length}
    lr = trainer_setup.resolve_lr(config.lr, pretrained.config)
    # Targets are multi-hot float vectors, as BCEWithLogitsLoss takes them.
    datasets = {name: tokenize_multilabel(split, pretrained.tokenizer, max_length, labels) for name, split in splits.items() if name != "test"}
    probe = linear_probe.HeadProbe(config.head_init == "linear-probe" and checkpoint is None, datasets, pretrained.tokenizer, config.seed)

    def init_head(model) -> None:
        # One logit per label, trained with binary cross-entropy (saved in config.json, so every loader knows the
        # outputs are sigmoids); set first, as the probe fits one regression per label for such a head.
        model.config.problem_type = "multi_label_classification"
        probe.init_head(model)

    model = trainer_setup.build_classifier(pretrained.folder, config, labels, init_head)
    plan = trainer_setup.plan_batch(config, model, pretrained.config, max_length, setup)
    if progress and setup.is_main:
        trainer_setup.print_plan(config, splits, labels, max_length, lr, setup, plan, point)
    trainer_setup.stage_run(setup, config, splits, labels, profile, checkpoint, max_length=max_length, batch_size=plan.batch_size, lr=lr)
    # The epoch with the lowest eval loss is kept: the thresholds come later, so the ranking the loss measures is what matters.
    args = trainer_setup.training_arguments(config, setup, plan.batch_size, lr, len(datasets["train"]), best_metric="loss")
    pos_weight = resolve_pos_weight(config.pos_weight, datasets["train"]["labels"])  # counted on the train rows only
    trainer = trainer_setup.build_trainer(
        SubsetAccuracyTrainer,
        config,
        setup,
        args,
        model,
        datasets,
        pretrained.tokenizer,
        progress,
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        class_weights=pos_weight,
        compute_metrics=multilabel_scores,
    )
    trained = trainer_setup.train_timed(trainer, checkpoint)
    if setup.is_main:  # launched by torchrun (--nproc), every process trains and the main one writes the run
        facts = trainer_setup.training_metrics(trainer, trained, setup)
        probe.record(facts)
        if pos_weight is not None:
            facts["pos_weight"] = dict(zip(labels, pos_weight.tolist()))
        save_and_evaluate(config, setup, trainer, facts, splits["eval"], labels, max_length, progress)
    setup.state.wait_for_everyone()
    return Run.open(setup.out)


def save_and_evaluate(
    config: MultiLabelConfig, setup: trainer_setup.RunSetup, trainer, facts: dict, eval_split, labels: list[str], max_length: int, progress: bool
) -> None:
    """model/, the thresholds chosen on eval, metrics.json with the training facts, the test-split evaluation and report; then publish."""
    trainer_setup.save_model(trainer, setup.staging / "model")
    thresholds = thresholds_on_eval(Classifier.load(setup.staging / "model", max_length), eval_split, labels, config.eval_batch_size)
    write_thresholds(setup.staging, thresholds)
    atomic.write_json(setup.staging / "metrics.json", {"task": TASK, **facts, "thresholds": thresholds})
    from tunelab.evaluation.multilabel_pipeline import evaluate_multilabel_run

    evaluate_multilabel_run(Run(setup.staging), progress=progress, baseline=config.baseline)
    trainer_setup.publish_run(setup, config.overwrite)


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
    with accuracy meaning subset accuracy: a row counts when every label is right at threshold 0.5;
    and class_weights, when given, read as each label's positive weight (`resolve_pos_weight`)."""

    def weighted_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=self.class_weights.to(logits.device))

    def count_batch(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        exact = ((logits > 0) == (labels > 0.5)).all(dim=-1)
        self.count_right(exact, torch.ones_like(exact))


def resolve_pos_weight(setting: str, train_targets) -> torch.Tensor | None:
    """Each label's positive weight in the binary cross-entropy, from the train split's multi-hot rows, or None for the plain loss.
    sqrt: the square root of negatives / positives, at most POS_WEIGHT_MAX; a label with no positive row keeps 1."""
    if setting == "none":
        return None
    targets = torch.as_tensor(np.asarray(train_targets), dtype=torch.float64)
    positives = targets.sum(dim=0)
    ratio = (len(targets) - positives) / positives.clamp(min=1)
    return torch.where(positives > 0, ratio.sqrt().clamp(max=POS_WEIGHT_MAX), torch.ones_like(ratio)).float()


def multilabel_scores(eval_prediction) -> dict[str, float]:
    """compute_metrics for per-epoch evaluation at threshold 0.5: subset accuracy (as `accuracy`) and micro-F1."""
    logits, targets = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = (np.asarray(logits) > 0).astype(int)
    targets = (np.asarray(targets) > 0.5).astype(int)
    return {"accuracy": float(accuracy_score(targets, predicted)), "f1_micro": float(f1_score(targets, predicted, average="micro", zero_division=0))}
