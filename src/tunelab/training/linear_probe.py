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
the baseline's, `models/linear.fit_logreg`.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from tunelab.models.linear import LinearSettings, fit_logreg
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

    Returns what to record: the chosen C and the probe's train and eval accuracy.
    """
    features = {name: pooled_features(model, datasets[name], tokenizer) for name in ("train", "eval")}
    y = {name: np.asarray(datasets[name]["labels"]) for name in ("train", "eval")}
    classes = model.config.num_labels
    pipeline, c, scores, _ = fit_logreg(LinearSettings(method="embeddings-logreg", seed=seed), features, y, classes)
    logreg = pipeline[-1]
    weight, bias = logreg.coef_, logreg.intercept_
    if classes == 2:
        # scikit-learn keeps one decision value z for two classes, P(class 1) = sigmoid(z); the logits
        # (-z/2, z/2) give the same probabilities under the head's softmax.
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    head = model.classifier
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
    return {"C": c, "train_accuracy": round(scores["train_accuracy"], 4), "eval_accuracy": round(scores["eval_accuracy"], 4)}
