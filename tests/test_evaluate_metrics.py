"""The evaluation's pure parts: metrics against scikit-learn, the over-fitting check, the bias probe."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)
from sklearn.preprocessing import label_binarize

from tunelab.errors import TunelabError
from tunelab.evaluation.bias import Swapper, bias_probe, load_pairs
from tunelab.evaluation.generalisation import generalisation_check
from tunelab.evaluation.metrics import classification_metrics


def predictions(k: int, n: int, seed: int, classes: list[int] | None = None):
    """Labels and probabilities that are informative but imperfect, like a real model's."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes if classes is not None else k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def naive_ece(y, proba, bins=10):
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    ids = np.minimum((conf * bins).astype(int), bins - 1)
    return sum((ids == b).mean() * abs(correct[ids == b].mean() - conf[ids == b].mean()) for b in range(bins) if (ids == b).any())


def assert_matches_sklearn(m, y, proba, k):
    ids = list(range(k))
    pred = proba.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["loss"] == pytest.approx(log_loss(y, proba, labels=ids))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    for i, name in enumerate(m["labels"]):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=ids, average=average, zero_division=0)
        assert (m[average]["precision"], m[average]["recall"], m[average]["f1"]) == pytest.approx((p, r, f))
        assert m[average]["support"] == len(y)
    assert m["f1_macro"] == m["macro"]["f1"]
    assert m["confusion_matrix"]["counts"] == confusion_matrix(y, pred, labels=ids).tolist()
    assert np.allclose(m["confusion_matrix"]["normalized"], confusion_matrix(y, pred, labels=ids, normalize="true"))
    assert m["ece"] == pytest.approx(naive_ece(y, proba))
    for i, name in enumerate(m["labels"]):
        if m["roc_auc"]["per_class"][name] is not None:
            assert m["roc_auc"]["per_class"][name] == pytest.approx(roc_auc_score(y == i, proba[:, i]))
            assert m["average_precision"]["per_class"][name] == pytest.approx(average_precision_score(y == i, proba[:, i]))


def test_binary_metrics_equal_sklearn():
    y, proba = predictions(2, 300, seed=1)
    m = classification_metrics(y, proba, ["neg", "pos"])
    assert_matches_sklearn(m, y, proba, 2)
    assert m["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    assert m["average_precision"]["per_class"]["pos"] == pytest.approx(average_precision_score(y, proba[:, 1]))
    assert "top_2_accuracy" not in m  # with two classes it is always 1
    assert m["absent_classes"] == [] and m["roc_auc"]["undefined"] == {}


def test_multiclass_metrics_equal_sklearn():
    y, proba = predictions(4, 400, seed=2)
    labels = ["business", "sport", "tech", "politics"]
    m = classification_metrics(y, proba, labels)
    assert_matches_sklearn(m, y, proba, 4)
    assert m["roc_auc"]["macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert m["average_precision"]["macro"] == pytest.approx(average_precision_score(label_binarize(y, classes=range(4)), proba, average="macro"))
    assert m["top_2_accuracy"] == pytest.approx(top_k_accuracy_score(y, proba, k=2, labels=range(4)))
    assert 0.3 < m["accuracy"] < 0.95  # informative but imperfect: a real check, not a degenerate one


def test_missing_class_does_not_crash_and_says_why():
    y, proba = predictions(3, 120, seed=3, classes=[0, 2])
    labels = ["business", "sport", "tech"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no UndefinedMetricWarning either
        m = classification_metrics(y, proba, labels)
    assert_matches_sklearn(m, y, proba, 3)
    assert m["absent_classes"] == ["sport"]
    assert m["roc_auc"]["per_class"]["sport"] is None
    assert "'sport' does not occur" in m["roc_auc"]["undefined"]["sport"]
    assert m["average_precision"]["per_class"]["sport"] is None
    defined = [roc_auc_score(y == i, proba[:, i]) for i in (0, 2)]
    assert m["roc_auc"]["macro"] == pytest.approx(np.mean(defined))
    assert "2 of 3 classes" in m["roc_auc"]["macro_note"]
    assert m["per_class"]["sport"]["support"] == 0
    assert m["confusion_matrix"]["normalized"][1] == [0.0, 0.0, 0.0]


def test_single_class_data_has_no_auc_but_other_metrics():
    y, proba = predictions(2, 30, seed=4, classes=[1])
    m = classification_metrics(y, proba, ["neg", "pos"])
    assert m["roc_auc"]["macro"] is None and "single class" in m["roc_auc"]["macro_note"]
    assert "no negatives" in m["roc_auc"]["undefined"]["pos"]
    assert m["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(axis=1)))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 5), n=st.integers(3, 60), seed=st.integers(0, 10_000))
def test_any_predictions_match_sklearn(k, n, seed):
    y, proba = predictions(k, n, seed)
    m = classification_metrics(y, proba, [f"c{i}" for i in range(k)])
    assert_matches_sklearn(m, y, proba, k)


def test_ece_by_hand():
    # Two examples at 95% confidence, one right: |0.5 - 0.95| = 0.45; two at 55%, both right: |1 - 0.55| = 0.45.
    proba = np.array([[0.05, 0.95], [0.05, 0.95], [0.45, 0.55], [0.45, 0.55]])
    m = classification_metrics([1, 0, 1, 1], proba, ["a", "b"])
    assert m["ece"] == pytest.approx(0.45)
    assert m["calibration"]["bin_count"] == [2, 2]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], np.ones((2, 3)) / 3, ["a", "b"])
    with pytest.raises(ValueError, match="label ids"):
        classification_metrics([0, 2], np.ones((2, 2)) / 2, ["a", "b"])


# generalisation ---------------------------------------------------------------------
def history(eval_losses, train_loss=0.5, train_acc=0.8, eval_acc=0.78):
    rows = []
    for epoch, eval_loss in enumerate(eval_losses, start=1):
        rows += [
            {"type": "train", "step": epoch * 10 - 5, "epoch": epoch - 0.5, "loss": train_loss},
            {"type": "train", "step": epoch * 10, "epoch": float(epoch), "loss": train_loss},
        ]
        rows.append({"type": "eval", "step": epoch * 10, "epoch": float(epoch), "eval_loss": eval_loss, "eval_accuracy": eval_acc, "train_accuracy": train_acc})
    return rows + [{"type": "summary", "train_runtime": 1.0}]


def test_close_losses_generalise():
    check = generalisation_check(history([0.6, 0.55]))
    assert check["verdict"] == "ok"
    assert check["train_loss"] == pytest.approx(0.5) and check["eval_loss"] == pytest.approx(0.55)


def test_large_gaps_and_rising_eval_loss_are_flagged():
    check = generalisation_check(history([0.6, 1.2], train_loss=0.1, train_acc=0.99, eval_acc=0.7))
    assert check["verdict"] == "overfitting"
    text = " ".join(check["reasons"])
    assert "training loss" in text and "above eval accuracy" in text and "rose from 0.600" in text


def test_missing_history_is_unknown_not_an_error():
    assert generalisation_check([])["verdict"] == "unknown"
    # tolerant of missing keys: no accuracies, no steps
    check = generalisation_check([{"type": "train", "loss": 0.3}, {"type": "eval", "eval_loss": 0.32}])
    assert check["verdict"] == "ok" and check["accuracy_gap"] is None


# bias probe -------------------------------------------------------------------------
def test_swapper_swaps_both_ways_and_keeps_case():
    swap = Swapper([("he", "she"), ("his", "her"), ("john", "mary")])
    assert swap("He said his dog likes HER, and she told John.") == "She said her dog likes HIS, and he told Mary."
    assert swap("these theses; shepherd") == "these theses; shepherd"  # whole words only


def test_bias_probe_counts_flips_and_shifts():
    texts = ["she is great", "he is great", "no pronoun here", "she runs"]
    labels = ["neg", "pos"]

    def score(batch):  # a biased fake model: "she" pushes towards pos
        return np.array([[0.2, 0.8] if "she" in t else [0.6, 0.4] for t in batch])

    proba = score(texts)
    result = bias_probe(texts, proba, score, labels, {"pronouns": [("he", "she")], "names": [("john", "mary")]})
    entry = result["lists"]["pronouns"]
    assert entry["texts_probed"] == 3 and entry["flipped"] == 3 and entry["flip_rate"] == 1.0
    # she->he: P(pos) 0.8 -> 0.4 (shift -0.4); he->she: P(neg) 0.6 -> 0.2 (shift -0.4)
    assert entry["mean_shift"] == pytest.approx(-0.4) and entry["mean_abs_shift"] == pytest.approx(0.4)
    assert {e["swapped"] for e in entry["examples"]} == {"he is great", "she is great", "he runs"}
    assert entry["examples"][0]["predicted"] != entry["examples"][0]["predicted_after_swap"]
    names = result["lists"]["names"]
    assert names["texts_probed"] == 0 and names["flip_rate"] is None and "no evaluation text" in names["reason"]


def test_load_pairs_text_and_yaml(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# my lists\nsir, madam\n[titles]\nmr/mrs\nlord\tlady\n[names]\nahmed fatima  # comment\n", encoding="utf-8")
    assert load_pairs(path) == {"pairs": [("sir", "madam")], "titles": [("mr", "mrs"), ("lord", "lady")], "names": [("ahmed", "fatima")]}
    yml = tmp_path / "pairs.yaml"
    yml.write_text("jobs: [[waiter, waitress], [actor, actress]]\n", encoding="utf-8")
    assert load_pairs(yml) == {"jobs": [("waiter", "waitress"), ("actor", "actress")]}


def test_load_pairs_names_the_bad_line(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("he,she\nking,queen,prince\n", encoding="utf-8")
    with pytest.raises(TunelabError, match=r"pairs.txt:2: expected two terms"):
        load_pairs(path)
    with pytest.raises(TunelabError, match="does not exist"):
        load_pairs(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(TunelabError, match="has no pairs"):
        load_pairs(tmp_path / "empty.txt")
