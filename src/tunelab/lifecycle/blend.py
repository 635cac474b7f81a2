"""Weight-space blending of a fine-tuned classifier with the model it started from.

Continued fine-tuning moves every weight toward the new data; the old model's knowledge sits at the
start of that path. Points on the straight line between the two often keep most of what the start
knew and most of what training added (Wortsman et al., "Robust fine-tuning of zero-shot models",
2022: WiSE-FT). Both ends must share one architecture and head size, which `update` guarantees by
growing the head before training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

# Share of the way from the start model to the trained one; 1.0 is the trained model unchanged.
BLEND_ALPHAS = (0.25, 0.5, 0.75, 1.0)


def blend_states(start: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * start + alpha * trained for floating-point tensors; others (e.g. position ids) from trained."""
    if start.keys() != trained.keys():
        missing = sorted(set(start) ^ set(trained))[:3]
        raise ValueError(f"the two models do not have the same weights (e.g. {', '.join(missing)})")
    blended = {}
    for name, weight in trained.items():
        if weight.is_floating_point():
            blended[name] = torch.lerp(start[name].to(weight.dtype), weight, alpha)
        else:
            blended[name] = weight
    return blended


def choose_alpha(
    start_dir: str | os.PathLike,
    trained_dir: str | os.PathLike,
    score: Callable[[object], float],
    alphas: Iterable[float] = BLEND_ALPHAS,
    max_length: int | None = None,
) -> tuple[float, dict[float, float], object]:
    """The alpha whose blended classifier scores highest (the smallest alpha wins a tie: it moved least).

    score(classifier) -> number, higher is better; computed on data neither model was trained on.
    Returns (alpha, {alpha: score}, the classifier holding the chosen blend).
    """
    from tunelab.models.classifier import Classifier
    from tunelab.models.pooling import load_sequence_classifier

    classifier = Classifier.load(trained_dir, max_length=max_length)
    trained = {name: tensor.clone() for name, tensor in classifier.model.state_dict().items()}
    start = load_sequence_classifier(start_dir).state_dict()
    scores: dict[float, float] = {}
    for alpha in sorted(alphas):
        classifier.model.load_state_dict(blend_states(start, trained, alpha))
        scores[alpha] = float(score(classifier))
    best = max(scores.values())
    alpha = min(a for a, s in scores.items() if s >= best - 1e-12)
    classifier.model.load_state_dict(blend_states(start, trained, alpha))
    return alpha, scores, classifier


def mean_accuracy(sets: Sequence[tuple[Sequence[str], Sequence[str]]]) -> Callable[[object], float]:
    """A scorer: the mean over (texts, labels) sets of the classifier's accuracy on each, so a small
    set (the new data's) counts as much as a large one (the old test data's)."""

    def score(classifier) -> float:
        accuracies = []
        for texts, labels in sets:
            if len(texts) == 0:
                continue
            predicted = np.asarray(classifier.labels)[classifier.logits(list(texts)).argmax(axis=1)]
            accuracies.append(float((predicted == np.asarray(labels, dtype=object)).mean()))
        return float(np.mean(accuracies)) if accuracies else 0.0

    return score


def save_blend(classifier, folder: Path) -> None:
    classifier.model.save_pretrained(folder)
    classifier.tokenizer.save_pretrained(folder)
