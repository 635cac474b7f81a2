"""tunelab: fine-tune, measure and deploy Hugging Face Transformers models on your own data.

Every command is a plain Python function first:

    import tunelab
    run = tunelab.train(tunelab.TrainConfig(model="minilm", data="bbc-news"))
    tunelab.predict(run, ["Shares rose sharply after the results"])
"""

from __future__ import annotations

import os

# Nothing may download from the Hugging Face hub: models and data come from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The functions below are verbs and no module shares their names (tunelab/training/, evaluation/,
# prediction.py): importing a sub-module rebinds its name on this package, which would replace a function
# of that name, and `import tunelab.evaluation.metrics as x` resolves through these attributes.
from tunelab.config import MultiLabelConfig, TokenClassificationConfig, TrainConfig  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.run import Run  # noqa: E402

__version__ = "0.1.0"


def train(config: TrainConfig | None = None, **settings):
    """Fine-tune a classifier; see TrainConfig for the settings (MultiLabelConfig, or task="multi-label",
    for label sets; TokenClassificationConfig, or task="token-classification", for word tags). Returns the finished Run."""
    if isinstance(config, MultiLabelConfig) or (config is None and settings.get("task") == "multi-label"):
        from tunelab.training.multilabel import train_multilabel

        return train_multilabel(config or MultiLabelConfig(**settings))
    if isinstance(config, TokenClassificationConfig) or (config is None and settings.get("task") == "token-classification"):
        from tunelab.training.token_classification import train_token_classifier

        return train_token_classifier(config or TokenClassificationConfig(**settings))
    from tunelab.training.classify import train as _train

    return _train(config or TrainConfig(**settings))


def predict(run, texts, **kwargs):
    """Labels and class probabilities for texts, from a run directory (or Run)."""
    from tunelab.prediction import predict as _predict

    return _predict(run, texts, **kwargs)


def evaluate(run, data=None, **kwargs):
    """Evaluate a run on its test split or on other labelled data; writes metrics, plots and a report."""
    from tunelab.evaluation import evaluate_run

    return evaluate_run(run if isinstance(run, Run) else Run.open(run), data, **kwargs)


__all__ = ["MultiLabelConfig", "Run", "TrainConfig", "TunelabError", "evaluate", "predict", "train", "__version__"]
