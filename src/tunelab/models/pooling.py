"""A classification head on the mean of the encoder's token states, and the one loader of sequence classifiers.

Sentence-transformers such as the catalogue's MiniLM were trained so that the masked mean of their last
hidden states is the text's meaning; their [CLS] pooler was never trained for that. Hugging Face's
`...ForSequenceClassification` heads read the [CLS] pooler, so on few rows the head starts from a
poor summary. `MeanPooledClassifier` is the encoder (`AutoModel`) plus dropout and a linear layer on
the mean of the non-padding token states.

Its model/ folder is a plain Hugging Face folder whose config.json carries `tunelab_pooling: "mean"`;
`load_sequence_classifier` reads that flag, so predict, evaluate, serve, compare and ONNX export
load either kind through one function.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLING_KEY = "tunelab_pooling"  # config.json: "mean" for a MeanPooledClassifier; absent for Hugging Face's heads


class MeanPooledClassifier(PreTrainedModel):
    """encoder -> masked mean of the last hidden states -> dropout -> linear, with Hugging Face's forward signature."""

    config_class = PretrainedConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PretrainedConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        self.encoder = encoder if encoder is not None else AutoModel.from_config(config)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused: its weights would get no gradient (and trip DDP's unused-parameter check)
        dropout = getattr(config, "classifier_dropout", None)
        dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is self.classifier:
            nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
            nn.init.zeros_(module.bias)

    def pooled(self, input_ids=None, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The masked mean of the last hidden states: what the head reads (through dropout, which is off in eval mode)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        states = self.encoder(**inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        logits = self.classifier(self.dropout(self.pooled(input_ids, attention_mask, token_type_ids)))
        return SequenceClassifierOutput(loss=self.loss(logits, labels) if labels is not None else None, logits=logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss config.problem_type names, as Hugging Face's heads choose it: binary cross-entropy per label for
        multi-label runs (multi-hot float targets), else cross-entropy over the classes (class ids)."""
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels)


def new_classifier(model_dir: str | os.PathLike, pooling: str, labels: list[str], **config_overrides) -> PreTrainedModel:
    """The pretrained encoder of model_dir with a fresh head over len(labels) classes, pooled by "cls" or "mean".

    config_overrides: settings of the model's config to change before it is built, given to every from_pretrained here
    (e.g. num_hidden_layers, training/trainer_setup.layer_kwargs), so the encoder and the saved config agree."""
    id2label, label2id = dict(enumerate(labels)), {label: i for i, label in enumerate(labels)}
    if pooling == "cls":
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True, **config_overrides
        )
    config = AutoConfig.from_pretrained(model_dir, num_labels=len(labels), id2label=id2label, label2id=label2id, **config_overrides)
    setattr(config, POOLING_KEY, "mean")
    # AutoModel finds the encoder's weights in a bare encoder folder and in a ...ForSequenceClassification one alike.
    encoder = AutoModel.from_pretrained(model_dir, **config_overrides)
    return MeanPooledClassifier(config, encoder)


def load_sequence_classifier(model_dir: str | os.PathLike) -> PreTrainedModel:
    """A trained classifier from its model/ folder, whichever head it was trained with."""
    config = AutoConfig.from_pretrained(Path(model_dir))
    if getattr(config, POOLING_KEY, None) == "mean":
        return MeanPooledClassifier.from_pretrained(model_dir, config=config)
    return AutoModelForSequenceClassification.from_pretrained(model_dir)
