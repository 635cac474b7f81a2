"""Each task's settings class and training function: the one table `tunelab train` and `tunelab resume`
(cli), the torchrun launcher (launch.py) and compare's candidates pick a trainer from."""

from __future__ import annotations

from collections.abc import Callable

from tunelab.config import (
    ExtractiveQAConfig,
    MultiLabelConfig,
    PairClassificationConfig,
    Settings,
    TokenClassificationConfig,
    TrainConfig,
    TrainerSettings,
)
from tunelab.run import Run

# `classification` is `tunelab train` without --task; its settings (TrainConfig) have no `task` field.
SETTINGS: dict[str, type[TrainerSettings]] = {
    "classification": TrainConfig,
    "multi-label": MultiLabelConfig,
    "pair-classification": PairClassificationConfig,
    "extractive-qa": ExtractiveQAConfig,
    "token-classification": TokenClassificationConfig,
}


def task_of(settings: Settings) -> str:
    return getattr(settings, "task", "classification")


def trainer_of(settings: Settings) -> Callable[..., Run]:
    """The function that trains a run of these settings: `f(settings, progress=True, resume=False) -> Run`
    for every task (a scikit-learn baseline's takes no `resume`). Imported on demand: each pulls in torch."""
    from tunelab.training.baselines import BaselineConfig

    if isinstance(settings, BaselineConfig):
        from tunelab.training.baselines import train_baseline

        return train_baseline
    task = task_of(settings)
    if task == "multi-label":
        from tunelab.training.multilabel import train_multilabel

        return train_multilabel
    if task == "token-classification":
        from tunelab.training.token_classification import train_token_classifier

        return train_token_classifier
    if task == "extractive-qa":
        from tunelab.training.extractive_qa import train_extractive_qa

        return train_extractive_qa
    from tunelab.training.classify import train  # single texts and text pairs

    return train
