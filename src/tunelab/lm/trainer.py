"""A Trainer that projects onto the vocabulary only where the loss looks.

In supervised fine-tuning the loss covers the answer tokens only, yet a causal LM's forward pass
computes logits for every position: batch x length x vocabulary floats (SmolLM2: 49,152 words), and
their softmax and gradient besides. With retrieved context in the prompt, the answer is a few tokens
out of hundreds, so almost all of that work and memory is thrown away. Models in transformers take
`logits_to_keep`, a boolean mask of the positions to project; we pass the answer positions and compute
the same cross-entropy on them. The loss is identical to the model's own; only the waste is gone.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from transformers import Trainer

from tunelab.lm.tokenize import IGNORE


def supports_logits_to_keep(model) -> bool:
    """Whether the (possibly peft-wrapped) causal LM's forward takes `logits_to_keep`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_only_loss(model, inputs: dict) -> tuple[torch.Tensor, object]:
    """Mean next-token cross-entropy over the labelled positions, projecting only those."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    targets = labels[:, 1:]
    scored = targets != IGNORE
    # Position t predicts token t + 1: keep t where label t + 1 is scored (the last position predicts nothing).
    keep = F.pad(scored, (0, 1), value=False)
    outputs = model(**inputs, logits_to_keep=keep)
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    count = int(scored.sum())
    if count == 0:  # a batch whose answers were all truncated away: nothing to learn, but keep the graph
        return logits.sum() * 0.0, outputs
    return F.cross_entropy(logits, targets[scored], reduction="sum") / count, outputs


class AnswerOnlyTrainer(Trainer):
    """Trainer whose loss projects hidden states onto the vocabulary at answer positions only."""

    # Our loss is a per-batch mean: the Trainer divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = answer_only_loss(model, inputs)
        return (loss, outputs) if return_outputs else loss
