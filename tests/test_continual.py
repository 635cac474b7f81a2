"""tunelab update: replay, head growth, the forgetting gate in both directions, SIGKILL safety."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import FILLER, sentiment_frame, sigkill_when, write_tiny_bert
from tunelab.errors import TunelabError
from tunelab.lifecycle.continual import DEFAULT_REPLAY, UpdateSettings, check_mix_covers, gate, grow_head, replay_sample, update
from tunelab.lifecycle.registry import Registry


def two_class_model(folder: Path) -> Path:
    """A tiny classifier whose head has trained-looking (non-zero, distinct) rows for two labels."""
    from transformers import AutoModelForSequenceClassification

    write_tiny_bert(folder, num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    torch.manual_seed(3)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
        model.classifier.bias.copy_(torch.tensor([0.7, -0.4]))
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(folder)
    return folder


def test_grow_head_keeps_old_rows_and_adds_new_ones(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    old_dir = two_class_model(tmp_path / "old")
    new_dir = grow_head(old_dir, ["negative", "neutral", "positive"], tmp_path / "grown")
    old = AutoModelForSequenceClassification.from_pretrained(old_dir).eval()
    new = AutoModelForSequenceClassification.from_pretrained(new_dir).eval()
    assert new.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert new.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    # Old rows moved to their new indices (positive: 1 -> 2), unchanged.
    assert torch.equal(new.classifier.weight[0], old.classifier.weight[0])
    assert torch.equal(new.classifier.weight[2], old.classifier.weight[1])
    assert new.classifier.bias[0] == old.classifier.bias[0] and new.classifier.bias[2] == old.classifier.bias[1]
    assert new.classifier.bias[1] == 0 and not torch.equal(new.classifier.weight[1], old.classifier.weight[0])
    # So the old classes' logits are exactly what the old model said.
    tokenizer = AutoTokenizer.from_pretrained(new_dir)
    batch = tokenizer(["good film", "bad food was awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before, after = old(**batch).logits, new(**batch).logits
    assert torch.allclose(after[:, [0, 2]], before, atol=1e-6)
    # The grown folder is a plain Hugging Face folder: from_pretrained with the new size loads the head, not a fresh one.
    reloaded = AutoModelForSequenceClassification.from_pretrained(new_dir, num_labels=3, ignore_mismatched_sizes=True)
    assert torch.equal(reloaded.classifier.weight, new.classifier.weight)


def test_grow_head_never_drops_labels(tmp_path):
    old_dir = two_class_model(tmp_path / "old")
    with pytest.raises(TunelabError, match="cannot lose labels: 'positive'"):
        grow_head(old_dir, ["negative", "neutral"], tmp_path / "grown")


def test_replay_sample_share_and_strata():
    old = sentiment_frame(rows_per_class=50, seed=4)
    sample = replay_sample(old, new_rows=70, replay=0.3, seed=0)
    assert len(sample) == pytest.approx(30, abs=2)  # 30% of a 100-row mix
    assert set(sample["label"]) == set(old["label"])
    assert sample.merge(old, on=["text", "label"]).shape[0] >= len(sample)  # drawn from the old rows
    assert len(replay_sample(old, 70, 0.0, 0)) == 0
    assert len(replay_sample(old, 10_000, 0.9, 0)) == len(old)  # never more than there is
    tiny = replay_sample(old, new_rows=2, replay=0.1, seed=0)
    assert set(tiny["label"]) == set(old["label"])  # each old class at least once


def test_joint_class_weights_make_the_mix_count_like_all_the_data():
    from tunelab.lifecycle.continual import joint_class_weights

    old = pd.DataFrame({"text": [f"o{i}" for i in range(120)], "label": ["a"] * 80 + ["b"] * 40})
    new = pd.DataFrame({"text": [f"n{i}" for i in range(70)], "label": ["c"] * 60 + ["a"] * 10})
    mix = pd.concat([new, replay_sample(old, len(new), 0.3, seed=0)], ignore_index=True)
    weights = joint_class_weights(old, new, mix, 0.3)
    counts = mix["label"].value_counts()
    # Weighted, the mix has each class in the proportion it has in old + new together: a 90, b 40, c 60.
    assert {label: round(weights[label] * counts[label]) for label in "abc"} == {"a": 90, "b": 40, "c": 60}
    assert weights["c"] == 1.0  # a class only the new data has is all there
    assert joint_class_weights(old, new, new, 0.0) == {"c": 1.0, "a": 1.0}  # no replay: the old split is not in the mix


def test_explicit_class_weights_need_every_label():
    from tunelab.training.classify import resolve_class_weights

    assert resolve_class_weights("none", [0, 1, 1], ["x", "y"]) is None
    assert resolve_class_weights({"y": 2.0, "x": 0.5}, [0, 1, 1], ["x", "y"]).tolist() == [0.5, 2.0]
    with pytest.raises(TunelabError, match="no weight for 'y'"):
        resolve_class_weights({"x": 1.0}, [0, 1], ["x", "y"])


def test_mix_must_cover_every_class():
    mix = pd.DataFrame({"text": ["a", "b"], "label": ["positive", "negative"]})
    check_mix_covers(mix, ["negative", "positive"], 0.3)
    with pytest.raises(TunelabError, match="no examples of 'neutral'.*--replay above 0"):
        check_mix_covers(mix, ["negative", "neutral", "positive"], 0.0)


def scores(old: float, new: float) -> dict:
    return {"old": {"accuracy": old}, "new": {"accuracy": new}}


@pytest.mark.parametrize(
    ("before", "after", "tolerance", "passed", "why"),
    [
        (scores(0.90, 0.40), scores(0.895, 0.80), 1.0, True, "within the 1-point tolerance"),
        (scores(0.90, 0.40), scores(0.89, 0.80), 1.0, True, "within"),  # exactly 1 point: allowed
        (scores(0.90, 0.40), scores(0.88, 0.80), 1.0, False, "2.0 points lost > tolerance 1"),
        (scores(0.90, 0.40), scores(0.95, 0.40), 1.0, False, "not better on the new data"),
        (scores(0.90, 0.40), scores(0.80, 0.90), 15.0, True, "within the 15-point tolerance"),
    ],
)
def test_gate(before, after, tolerance, passed, why):
    result, reasons = gate(before, after, tolerance)
    assert result is passed
    assert any(why in r for r in reasons), reasons


# --- real updates with the tiny model ---------------------------------------------------------

LETTERS = list(string.ascii_lowercase)


def new_data(path: Path, seed: int, swap: bool = False, letters: bool = False) -> Path:
    """Fresh rows of the old classes; `letters` adds a new class, `swap` exchanges positive and negative labels."""
    frame = sentiment_frame(rows_per_class=30, seed=seed)
    if swap:
        frame["label"] = frame["label"].map({"positive": "negative", "negative": "positive"}).fillna(frame["label"])
    if letters:
        rng = random.Random(seed)
        rows = [(" ".join(rng.sample(LETTERS, 3) + rng.sample(FILLER, rng.randint(2, 6))), "letters") for _ in range(30)]
        frame = pd.concat([frame, pd.DataFrame(rows, columns=["text", "label"])], ignore_index=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def registry(tmp_path, trained_run) -> Registry:
    registry = Registry(tmp_path / "registry.db")
    registry.register(trained_run, "senti", promote=True)
    return registry


def test_update_with_a_new_label_passes_the_gate_and_is_promoted(tmp_path, registry, trained_run):
    data = new_data(tmp_path / "new.csv", seed=11, letters=True)
    runner = CliRunner()
    from tunelab.cli import app

    result = runner.invoke(
        app,
        [
            "update",
            "senti",
            "--data",
            str(data),
            "--epochs",
            "15",
            "--lr",
            "3e-3",
            "--tolerance",
            "10",
            "--out",
            str(tmp_path / "v2"),
            "--registry",
            str(registry.path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v2" / "update.json").read_text())
    assert report["labels"]["added"] == ["letters"]
    assert report["labels"]["after"] == ["letters", "negative", "neutral", "positive"]
    assert report["before"]["new"]["accuracy_per_class"]["letters"] == 0.0  # v1 cannot name a class it never saw
    assert "letters" not in report["before"]["new"]["predicted_share"] and sum(report["after"]["new"]["predicted_share"].values()) == pytest.approx(1.0)
    assert report["after"]["new"]["accuracy"] > report["before"]["new"]["accuracy"]
    assert report["gate"]["passed"] and report["stage"] == "production"
    assert "passed" in result.output and "senti@2 is production" in result.output
    assert f"new label 'letters': {report['after']['new']['accuracy_per_class']['letters']:.1%}" in result.output
    assert (tmp_path / "v2" / "update.html").read_text().count("<tr>") >= 6
    blend = report["blend"]  # on by default; the chosen mix scored best on the eval splits
    assert blend["alpha"] in (0.25, 0.5, 0.75, 1.0)
    assert blend["eval_mean_accuracy"][f"{blend['alpha']:g}"] == max(blend["eval_mean_accuracy"].values())
    assert (blend["alpha"] < 1) == ("test_accuracy_as_trained" in blend)
    assert "blend:" in result.output and "Blend:" in (tmp_path / "v2" / "update.html").read_text()
    assert set(report["loss_weight_per_label"]) == set(report["labels"]["after"]) and report["loss_weight_per_label"]["letters"] == 1.0
    assert "Loss weight per label (joint)" in (tmp_path / "v2" / "update.html").read_text()

    v2 = registry.get("senti", 2)
    assert (v2.stage, v2.parent) == ("production", 1) and v2.note.startswith("passed the gate")
    assert registry.get("senti", 1).stage == "archived"
    assert v2.data_fingerprint != registry.get("senti", 1).data_fingerprint
    mix = pd.read_parquet(tmp_path / "v2" / "splits" / "train.parquet")
    old_train = pd.read_parquet(Path(trained_run) / "splits" / "train.parquet")
    replayed = mix.merge(old_train, on=["text", "label"])
    assert len(replayed) / len(mix) == pytest.approx(DEFAULT_REPLAY, abs=0.06)  # no --replay: update's default
    assert registry.check() == []


def test_update_that_forgets_stays_a_candidate(tmp_path, registry):
    # Labels swapped and nothing replayed: the new data teaches the opposite of what v1 knew. Without
    # blending, which could step back toward v1 far enough to pass (it did here with a blend of 0.25).
    data = new_data(tmp_path / "swapped.csv", seed=12, swap=True)
    settings = UpdateSettings(name="senti", data=str(data), replay=0.0, epochs=3, lr=3e-3, tolerance=1.0, blend=False, out=str(tmp_path / "v2"))
    result = update(settings, registry, progress=False)
    before, after = result.report["before"], result.report["after"]
    assert not result.passed and not result.promoted
    assert (before["old"]["accuracy"] - after["old"]["accuracy"]) * 100 > 1.0
    assert any(r.startswith("forgot") for r in result.reasons), result.reasons
    assert result.version.stage == "candidate" and "failed the gate" in result.version.note
    assert registry.production("senti").version == 1
    assert "Gate failed" in (tmp_path / "v2" / "update.html").read_text()
    assert result.report["blend"] is None and "no blending" in (tmp_path / "v2" / "update.html").read_text()


def test_update_reads_the_new_data_with_its_own_delimiter(tmp_path, trained_run):
    # The parent was trained on a ';' file; the new data is comma-separated: the delimiter belongs to
    # the parent's file, so the update must detect the new file's own.
    import shutil

    import yaml

    parent = Path(shutil.copytree(trained_run, tmp_path / "parent"))
    config = yaml.safe_load((parent / "config.yaml").read_text())
    (parent / "config.yaml").write_text(yaml.safe_dump({**config, "delimiter": ";"}))
    registry = Registry(tmp_path / "r.db")
    registry.register(parent, "senti", promote=True)
    data = new_data(tmp_path / "new.csv", seed=13)
    settings = UpdateSettings(name="senti", data=str(data), epochs=1, lr=3e-3, tolerance=100.0, blend=False, out=str(tmp_path / "v2"))
    result = update(settings, registry, progress=False)
    assert result.version.version == 2
    assert yaml.safe_load((tmp_path / "v2" / "config.yaml").read_text()).get("delimiter") is None


def test_update_refuses_a_name_without_production(tmp_path, trained_run):
    registry = Registry(tmp_path / "r.db")
    registry.register(trained_run, "senti")
    with pytest.raises(TunelabError, match="no production version"):
        update(UpdateSettings(name="senti", data="x.csv"), registry, progress=False)


@pytest.mark.parametrize("task", ["multi-label", "pair-classification", "token-classification"])
def test_update_refuses_a_production_version_of_another_task(tmp_path, task):
    from tests.test_registry import fake_run

    registry = Registry(tmp_path / "r.db")
    run = fake_run(tmp_path / "run")
    (run / "config.yaml").write_text(f"task: {task}\nmax_length: 32\n")
    registry.register(run, "tags", promote=True)
    with pytest.raises(TunelabError, match=f"tunelab update does not handle {task} runs yet \\(tags@1 is one\\)"):
        update(UpdateSettings(name="tags", data="x.csv"), registry, progress=False)


def test_sigkill_during_update_leaves_the_registry_consistent(tmp_path, registry):
    data = new_data(tmp_path / "new.csv", seed=13, letters=True)
    out = tmp_path / "v2"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tunelab.cli import main; main()",
            "update",
            "senti",
            "--data",
            str(data),
            "--epochs",
            "50",
            "--out",
            str(out),
            "--registry",
            str(registry.path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    staging = tmp_path / ".v2.partial"
    sigkill_when(child, (staging / "config.yaml").exists, 120, "the candidate run was being made")
    assert not out.exists()  # the killed run never looks complete
    assert registry.check() == []
    assert [(v.version, v.stage) for v in registry.versions("senti")] == [(1, "production")]
    assert registry.production("senti").generation == 1
    assert registry.get("senti").parent is None
