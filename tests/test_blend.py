"""Weight-space blending of an updated classifier with its starting point."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import write_tiny_bert
from tunelab.lifecycle.blend import blend_states, choose_alpha, mean_accuracy
from tunelab.lifecycle.continual import replace_model
from tunelab.models.classifier import Classifier
from tunelab.run import Run


def test_blend_states_is_the_straight_line_and_keeps_integer_buffers():
    start = {"w": torch.zeros(3), "ids": torch.arange(3)}
    trained = {"w": torch.tensor([4.0, -8.0, 2.0]), "ids": torch.arange(3) + 10}
    assert torch.equal(blend_states(start, trained, 0.0)["w"], start["w"])
    assert torch.equal(blend_states(start, trained, 1.0)["w"], trained["w"])
    assert torch.allclose(blend_states(start, trained, 0.25)["w"], torch.tensor([1.0, -2.0, 0.5]))
    assert torch.equal(blend_states(start, trained, 0.25)["ids"], trained["ids"])
    with pytest.raises(ValueError, match="same weights"):
        blend_states({"w": torch.zeros(3)}, {"v": torch.zeros(3)}, 0.5)


def two_models(tmp_path):
    """The same tiny BERT twice, the second with every floating weight moved by +1."""
    from transformers import AutoModelForSequenceClassification

    start = write_tiny_bert(tmp_path / "start", num_labels=2)
    trained = tmp_path / "trained"
    shutil.copytree(start, trained)
    model = AutoModelForSequenceClassification.from_pretrained(trained)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(1.0)
    model.save_pretrained(trained)
    return start, trained


def classifier_bias(classifier) -> float:
    return float(classifier.model.classifier.bias[0])


def test_choose_alpha_takes_the_best_blend_and_the_smallest_on_a_tie(tmp_path):
    start, trained = two_models(tmp_path)  # bias[0]: 0 at the start, 1 when trained, alpha in between
    alpha, scores, classifier = choose_alpha(start, trained, lambda c: -abs(classifier_bias(c) - 0.5))
    assert alpha == 0.5 and set(scores) == {0.25, 0.5, 0.75, 1.0}
    assert classifier_bias(classifier) == pytest.approx(0.5)  # the returned classifier holds the chosen blend
    alpha, _, classifier = choose_alpha(start, trained, lambda c: 1.0)
    assert alpha == 0.25 and classifier_bias(classifier) == pytest.approx(0.25)


def test_mean_accuracy_weighs_each_set_equally():
    class Fixed:
        labels = ["a", "b"]

        def logits(self, texts):
            return np.array([[1.0, 0.0] if text.startswith("a") else [0.0, 1.0] for text in texts])

    score = mean_accuracy([(["a1"] * 9 + ["b1"], ["a"] * 10), (["a2"], ["b"]), ([], [])])
    assert score(Fixed()) == pytest.approx((0.9 + 0.0) / 2)


def test_replace_model_swaps_the_weights_and_recomputes_the_test_metrics(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = json.loads((run_dir / "metrics.json").read_text())
    classifier = Classifier.load(run_dir / "model")
    with torch.no_grad():
        classifier.model.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))  # now every text gets label 0
    run = replace_model(Run.open(run_dir), classifier, progress=False)

    after = json.loads((run_dir / "metrics.json").read_text())
    test = run.split("test")
    share_of_label_0 = float((test["label"] == run.labels[0]).mean())
    assert after["accuracy"] == pytest.approx(share_of_label_0) and after["accuracy"] < before["accuracy"]
    assert after["train"] == before["train"]  # the training facts are kept
    reloaded = Classifier.load(run.model_dir)
    assert float(reloaded.model.classifier.bias[0]) == 50.0
    assert not list(tmp_path.glob(".*partial*"))  # staged and published: nothing left behind
