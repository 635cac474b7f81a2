"""A Trainer that also reports training accuracy, as the guide asks us to watch it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from transformers import Trainer


class AccuracyTrainer(Trainer):
    """Counts correct predictions on the training batches it already computes (no extra forward pass).

    Logged as `train_accuracy`: over the steps since the last log on training lines, and over the
    epoch so far on evaluation lines. Dropout is active, so it reads a little below a clean pass.
    """

    def __init__(self, *args, class_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights
        # Classification heads return a per-batch mean loss and ignore num_items_in_batch, but their
        # forward(**kwargs) makes the Trainer think otherwise and multiply the loss by the number of
        # processes: doubled gradients and logged losses under DDP. Their loss is already an average.
        self.model_accepts_loss_kwargs = False
        self._window = torch.zeros(2, dtype=torch.float64)  # correct, seen since the last log
        self._epoch = torch.zeros(2, dtype=torch.float64)  # correct, seen since the last evaluation

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if self.class_weights is not None and labels is not None and model.training:
            # Weighted cross-entropy for training only: evaluation losses stay comparable between runs.
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            loss = F.cross_entropy(outputs.logits.float(), labels, weight=self.class_weights.to(outputs.logits.device))
        else:
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if labels is not None and model.training:
            predicted = outputs.logits.detach().argmax(dim=-1)
            counts = torch.tensor([(predicted == labels).sum().item(), labels.numel()], dtype=torch.float64)
            self._window += counts
            self._epoch += counts
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs["train_accuracy"] = self._accuracy(self._window)
            self._window.zero_()
        elif "eval_loss" in logs:
            logs["train_accuracy"] = self._accuracy(self._epoch)
            self._epoch.zero_()
        super().log(logs, start_time)

    def _accuracy(self, counts: torch.Tensor) -> float:
        if self.args.world_size > 1:
            # Every process saw a different shard; add them up.
            counts = self.accelerator.reduce(counts.to(self.args.device), reduction="sum").cpu()
        return float(counts[0] / counts[1]) if counts[1] > 0 else float("nan")


def balanced_class_weights(labels: list[int], classes: int) -> torch.Tensor:
    """rows / (classes x rows of the class), as scikit-learn's "balanced"; a class with no rows gets 0."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=classes).double()
    weights = torch.where(counts > 0, counts.sum() / (classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def classification_scores(eval_prediction) -> dict[str, float]:
    """compute_metrics for per-epoch evaluation: accuracy and macro-F1 (scikit-learn)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    predicted = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }
