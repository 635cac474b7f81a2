"""`head_init: linear-probe`: the mean-pooled head starts as a logistic regression on the frozen encoder's features.

Linear probing then fine-tuning (LP-FT, Kumar et al. 2022): a random head's first gradients pull the
pretrained features towards whatever fits its noise; a head that already separates the classes leaves
them less to undo. On a few hundred rows frozen MiniLM embeddings + logistic regression can beat a
fine-tune from a random head (benchmarks/small_data.py), which is what this starts the fine-tune from.

The probe is fitted on exactly what the head's linear layer reads in evaluation: the masked mean of the
encoder's last hidden states (`MeanPooledClassifier.pooled`, at the run's max length; dropout is off),
not the unit vectors the `embeddings-logreg` baseline fits on. Fitted on those, its coefficients would
be a different function of the pooled states than the head computes; fitted on these, the head's
logits are the regression's before the first step. The fit itself — C chosen on the eval split — is
the baseline's, `models/linear.fit_logreg`; for a multi-label run (problem_type "multi_label_classification",
a sigmoid per label) it is one logistic regression per label, `models/linear.fit_ovr`, C chosen on eval
micro-F1 as the TF-IDF one-vs-rest baseline's is, and each label's regression becomes that label's row of the head.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from tunelab.models.linear import LinearSettings, fit_logreg, fit_ovr
from tunelab.models.pooling import MeanPooledClassifier

FEATURE_BATCH = 32  # rows per forward pass while the frozen features are computed


def pooled_features(model: MeanPooledClassifier, dataset, tokenizer) -> np.ndarray:
    """The head's input for every row of a tokenized dataset (input_ids, attention_mask, ...), in eval mode."""
    collate = DataCollatorWithPadding(tokenizer)
    inputs = [column for column in ("input_ids", "attention_mask", "token_type_ids") if column in dataset.column_names]
    rows = dataset.select_columns(inputs)
    was_training = model.training
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(rows), FEATURE_BATCH):
            batch = collate([rows[i] for i in range(start, min(start + FEATURE_BATCH, len(rows)))])
            chunks.append(model.pooled(**batch).float().numpy())
    model.train(was_training)
    return np.concatenate(chunks)


def init_head_from_probe(model: MeanPooledClassifier, datasets, tokenizer, seed: int) -> dict:
    """Fit the probe on datasets["train"] (C on datasets["eval"]) and copy it into model.classifier.

    Returns what to record: the chosen C and the probe's train and eval accuracy (multi-label: its eval micro-F1).
    """
    features = {name: pooled_features(model, datasets[name], tokenizer) for name in ("train", "eval")}
    y = {name: np.asarray(datasets[name]["labels"]) for name in ("train", "eval")}
    settings = LinearSettings(method="embeddings-logreg", seed=seed)
    if model.config.problem_type == "multi_label_classification":
        y = {name: (targets > 0.5).astype(int) for name, targets in y.items()}  # the multi-hot float targets as 0/1
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        pipeline, c, _, eval_f1 = fit_ovr(settings, features, y, labels)
        weight, bias = ovr_head(pipeline[-1], y["train"])
        facts = {"C": c, "eval_f1_micro": round(eval_f1, 4)}
    else:
        pipeline, c, scores, _ = fit_logreg(settings, features, y, model.config.num_labels)
        weight, bias = softmax_head(pipeline[-1], model.config.num_labels)
        facts = {"C": c, "train_accuracy": round(scores["train_accuracy"], 4), "eval_accuracy": round(scores["eval_accuracy"], 4)}
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return facts


class HeadProbe:
    """`head_init: linear-probe` inside a training function: `init_head` (for trainer_setup.build_classifier) fits
    the probe and sets the fresh head when `wanted` — a resumed run's head comes from its checkpoint instead —,
    and `record` copies what the probe chose into metrics.json's "train" as "head_probe"."""

    def __init__(self, wanted: bool, datasets, tokenizer, seed: int):
        self.wanted = wanted
        self.datasets, self.tokenizer, self.seed = datasets, tokenizer, seed
        self.facts: dict = {}  # the chosen C and the probe's scores, once fitted

    def init_head(self, model: MeanPooledClassifier) -> None:
        if self.wanted:
            self.facts = init_head_from_probe(model, self.datasets, self.tokenizer, self.seed)

    def record(self, facts: dict) -> None:
        if self.facts:
            facts["train"]["head_probe"] = self.facts


def softmax_head(logreg, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression as the rows and biases of a softmax head over `classes` logits."""
    weight, bias = logreg.coef_, logreg.intercept_
    if classes == 2:
        # scikit-learn keeps one decision value z for two classes, P(class 1) = sigmoid(z); the logits
        # (-z/2, z/2) give the same probabilities under the head's softmax.
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return weight, bias


def ovr_head(ovr, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A one-vs-rest classifier as the rows and biases of a sigmoid-per-label head: each label's decision value is its logit.

    A label whose train rows are all 0 or all 1 has no regression (scikit-learn keeps a constant
    prediction, an infinite logit): its row is zero and its bias the log-odds of its train rate smoothed
    by one pseudo-row of each class, so the head starts at a finite, confident logit that fine-tuning can move.
    """
    rows, biases = [], []
    for label, estimator in enumerate(ovr.estimators_):
        if hasattr(estimator, "coef_"):
            rows.append(estimator.coef_[0])
            biases.append(estimator.intercept_[0])
        else:
            rate = (y_train[:, label].sum() + 1) / (len(y_train) + 2)
            rows.append(np.zeros(ovr.n_features_in_))
            biases.append(np.log(rate / (1 - rate)))
    return np.stack(rows), np.asarray(biases)
