"""Updating a registered model with new data: replay, head growth, a forgetting gate, then promotion.

The recipe, top to bottom:
production version -> load and split the new data -> mix in a replay sample of the old training split
-> grow the classification head for new labels (new rows start like a fresh head's) -> continue
fine-tuning (train()) -> blend the trained weights with the starting ones, as far along as the eval
splits favour (blend.py) -> score the old and the candidate model on the old test set and the new
test split -> gate -> report -> register (and promote).

Why replay: fine-tuning on new data alone pulls the weights toward the new distribution and the model
forgets what it knew (catastrophic forgetting). Mixing a sample of the old training data back in keeps
the old classes in every batch.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from tunelab import atomic
from tunelab.config import LabelledColumns, TrainConfig
from tunelab.errors import TunelabError
from tunelab.lifecycle.blend import choose_alpha, mean_accuracy, save_blend
from tunelab.lifecycle.registry import Registry, Version, check_name
from tunelab.run import Run, out_dir

# An update starts from a converged model and must stay near it: a quarter of the parent's peak rate,
# for twice its epochs (the mix is small). Over three seeds of benchmarks/forgetting.py, updates at the
# parent's rate lost 2.4 old-topic points, at a quarter for twice the epochs 1.3 (replay 0.5, joint class
# weights, imprinted new rows).
UPDATE_LR_FACTOR = 0.25
UPDATE_EPOCHS_FACTOR = 2.0

# Share of the training mix replayed from the old training split. Half: on bbc-news (tech added to four
# topics, 12 seeds of benchmarks/forgetting.py) replaying 0.5 learned the new topic as well as or better
# than 0.3 on every seed (mean 92% vs 79%; worst 78% vs 33%) for 0.2 more old-topic points lost (0.38 vs
# 0.19 on the pre-registered seeds) and a fifth more training time: the larger mix gives the new rows more steps.
DEFAULT_REPLAY = 0.5

# Settings of the parent's run that an update must not inherit: they describe the parent's data files and
# folder, not how to train, and the new data brings its own (a new CSV may use another delimiter or encoding).
NOT_INHERITED = {"model", "data", "eval_data", "test_data", "out", "overwrite", "max_train_samples", *LabelledColumns.model_fields}


class UpdateSettings(LabelledColumns):
    """`tunelab update`: continue fine-tuning a model's production version on new data, read by the
    columns and rules training reads its data by (config.LabelledColumns)."""

    name: str = Field(description="registered model name")
    data: str = Field(description="the new labelled data (file, folder or built-in name)")
    replay: float = Field(DEFAULT_REPLAY, ge=0, lt=1, description="share of the training mix drawn from the old training split")
    tolerance: float = Field(1.0, ge=0, description="accuracy points the old test set may lose and still pass the gate")
    class_weights: Literal["none", "balanced", "joint"] = Field(
        "joint",
        description="joint: weight each class by the rows it has in the old and new training data together over the rows it has in the mix, "
        "so the mix trains toward what training on all of that data would; balanced: every class the same total weight",
    )
    epochs: float | None = Field(None, gt=0, description=f"default: {UPDATE_EPOCHS_FACTOR:g} x the parent run's")
    lr: float | None = Field(None, gt=0, description=f"default: {UPDATE_LR_FACTOR:g} x the parent run's")
    warmup: float | None = Field(None, ge=0, lt=1, description="fraction of the steps warming up the learning rate; default: the parent run's")
    batch_size: int | None = Field(None, gt=0, description="default: the parent run's")
    eval_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="share of the new data held out for the gate")
    seed: int | None = Field(None, description="default: the parent run's")
    blend: bool = Field(True, description="blend the trained weights with the production model's, choosing the mix on the eval splits (old and new)")
    promote: bool = Field(True, description="promote the candidate when it passes the gate")
    out: str | None = Field(None, description="run directory of the candidate; default runs/<name>-update-<time>")


@dataclass
class UpdateResult:
    version: Version
    run: Run
    passed: bool
    promoted: bool
    reasons: list[str]
    report: dict[str, Any]


def update(settings: UpdateSettings, registry: Registry | None = None, progress: bool = True) -> UpdateResult:
    registry = registry or Registry()
    check_name(settings.name)
    parent = production_version(registry, settings.name)
    parent_run = _open_parent(parent)
    if parent_run.task != "classification":
        # Replay, head growth, blending and the gate are a single-label classifier's: another task's model would be misread.
        raise TunelabError(
            f"tunelab update does not handle {parent_run.task} runs yet ({parent.ref} is one)",
            f"train the new version with `tunelab train --task {parent_run.task}` and register it",
        )
    seed = settings.seed if settings.seed is not None else int(parent_run.config.get("seed", 42))
    data = prepare_data(settings, parent_run, seed)
    out = out_dir(settings.out, f"{settings.name}-update")  # the registry name as it is: it may hold dots
    with tempfile.TemporaryDirectory(prefix="tunelab-update-") as tmp:
        start = starting_model(parent_run, data.labels, Path(tmp) / "start-model", seed)
        candidate_run = continue_training(settings, parent_run.config, data, start, Path(tmp), seed, out, progress)
        candidate_run, blended = blend_with_start(settings, data, start, candidate_run, progress) if settings.blend else (candidate_run, None)
    before, after = score_sets(parent_run, data.test_sets), score_sets(candidate_run, data.test_sets)
    passed, reasons = gate(before, after, settings.tolerance)
    report = update_report(settings, parent, parent_run, candidate_run, data, blended, before, after, passed, reasons)
    version = register_candidate(registry, settings, parent, candidate_run, report)
    return UpdateResult(version, candidate_run, passed, version.stage == "production", reasons, report)


@dataclass
class UpdateData:
    """The data of an update: the new data's splits, the parent run's, and the training mix made of them."""

    new_splits: dict[str, pd.DataFrame]
    old_splits: dict[str, pd.DataFrame]
    replay: pd.DataFrame
    mix: pd.DataFrame
    labels: list[str]  # the grown model's, in id order
    added: list[str]
    class_weights: str | dict[str, float]

    @property
    def test_sets(self) -> dict[str, pd.DataFrame]:
        return {"old": self.old_splits["test"], "new": self.new_splits["test"]}


def production_version(registry: Registry, name: str) -> Version:
    production = registry.production(name)
    if production.version is None:
        raise TunelabError(f"{name} has no production version to update", f"promote one: `tunelab registry promote {name}@N`")
    return registry.get(name, production.version)


def prepare_data(settings: UpdateSettings, parent_run: Run, seed: int) -> UpdateData:
    """The new data split so that part of it is held out for the gate, the parent run's own splits, and
    the training mix: all new training rows plus a stratified replay sample of the old ones."""
    from tunelab.data.load import load_labelled
    from tunelab.data.split import make_splits

    new = load_labelled(settings.data, settings)
    new_splits = make_splits(new, settings.eval_fraction, settings.test_fraction, seed)
    old_splits = {name: parent_run.split(name) for name in ("train", "eval", "test")}
    replay = replay_sample(old_splits["train"], len(new_splits["train"]), settings.replay, seed)
    mix = pd.concat([new_splits["train"], replay], ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labels = sorted(set(parent_run.labels) | set(new_splits["train"]["label"]))
    check_mix_covers(mix, labels, settings.replay)
    class_weights = settings.class_weights
    if class_weights == "joint":
        class_weights = joint_class_weights(old_splits["train"], new_splits["train"], mix, settings.replay)
    added = [label for label in labels if label not in parent_run.labels]
    return UpdateData(new_splits, old_splits, replay, mix, labels, added, class_weights)


def starting_model(parent_run: Run, labels: list[str], grown: Path, seed: int) -> Path:
    """The production model; with new labels, saved to `grown` with new rows in its head (old rows kept)."""
    if parent_run.labels == labels:
        return parent_run.model_dir
    return grow_head(parent_run.model_dir, labels, grown, seed)


def continue_training(settings: UpdateSettings, parent_config: dict, data: UpdateData, start: Path, tmp: Path, seed: int, out: Path, progress: bool) -> Run:
    """train() from `start` on the mix, with the parent's recipe (max length, precision, method, ...);
    eval is the new and old eval splits, test the old test set and the new test split."""
    from tunelab.training.classify import train

    files = {}
    for split, frame in {
        "train": data.mix,
        "eval": pd.concat([data.new_splits["eval"], data.old_splits["eval"]], ignore_index=True),
        "test": pd.concat([data.old_splits["test"], data.new_splits["test"]], ignore_index=True),
    }.items():
        files[split] = tmp / f"{split}.parquet"
        frame[["text", "label"]].to_parquet(files[split], index=False)
    inherited = {k: v for k, v in parent_config.items() if k in TrainConfig.model_fields and k not in NOT_INHERITED}
    overrides = {
        "epochs": settings.epochs or scaled_from_parent(parent_config, "epochs", UPDATE_EPOCHS_FACTOR),
        "lr": settings.lr or scaled_from_parent(parent_config, "lr", UPDATE_LR_FACTOR),
        "warmup": settings.warmup,
        "batch_size": settings.batch_size,
        "seed": seed,
        "class_weights": data.class_weights,
    }
    inherited.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**inherited, model=str(start), data=str(files["train"]), eval_data=str(files["eval"]), test_data=str(files["test"]), out=str(out))
    return train(config, progress=progress)


def blend_with_start(settings: UpdateSettings, data: UpdateData, start: Path, candidate_run: Run, progress: bool) -> tuple[Run, dict[str, Any]]:
    """Step back from the trained weights toward the start along the straight line while the eval splits
    (old and new) say so; the run and what was tried."""
    evals = [(split["text"].astype(str).tolist(), split["label"].astype(str).tolist()) for split in (data.old_splits["eval"], data.new_splits["eval"])]
    alpha, scores, classifier = choose_alpha(start, candidate_run.model_dir, mean_accuracy(evals), max_length=candidate_run.config.get("max_length"))
    blended = {"alpha": alpha, "eval_mean_accuracy": {f"{a:g}": s for a, s in scores.items()}}
    if alpha < 1.0:
        # What the weights as trained score on the test sets: reported only, never used to choose.
        unblended = score_sets(candidate_run, data.test_sets)
        blended["test_accuracy_as_trained"] = {key: value["accuracy"] for key, value in unblended.items()}
        candidate_run = replace_model(candidate_run, classifier, progress)
    return candidate_run, blended


def update_report(
    settings: UpdateSettings,
    parent: Version,
    parent_run: Run,
    candidate_run: Run,
    data: UpdateData,
    blended: dict[str, Any] | None,
    before: dict,
    after: dict,
    passed: bool,
    reasons: list[str],
) -> dict[str, Any]:
    return {
        "name": settings.name,
        "parent": parent.ref,
        "parent_run": parent.run_dir,
        "candidate_run": str(candidate_run.path.resolve()),
        "new_data": settings.data,
        "replay": settings.replay,
        "class_weights": settings.class_weights,
        "loss_weight_per_label": data.class_weights if isinstance(data.class_weights, dict) else None,
        "blend": blended,
        "tolerance_points": settings.tolerance,
        "rows": {
            "new_train": len(data.new_splits["train"]),
            "replay": len(data.replay),
            "old_test": len(data.old_splits["test"]),
            "new_test": len(data.new_splits["test"]),
        },
        "labels": {"before": parent_run.labels, "after": data.labels, "added": data.added},
        "before": before,
        "after": after,
        "gate": {"passed": passed, "reasons": reasons},
    }


def register_candidate(registry: Registry, settings: UpdateSettings, parent: Version, candidate_run: Run, report: dict[str, Any]) -> Version:
    """Report first, registry last: a crash before the registry write leaves only an unregistered run."""
    write_report(candidate_run.path, report)
    passed, reasons = report["gate"]["passed"], report["gate"]["reasons"]
    verdict = ("passed the gate: " if passed else "failed the gate: ") + "; ".join(reasons)
    version = registry.register(
        candidate_run.path,
        settings.name,
        parent=parent.version,
        note=verdict,
        promote=passed and settings.promote,
        expect_production=parent.version,
    )
    report["version"] = version.ref
    report["stage"] = version.stage
    write_report(candidate_run.path, report)
    return version


def scaled_from_parent(parent_config: dict, key: str, factor: float) -> float | None:
    """The parent run's resolved `key` (lr, epochs) times `factor`; None when the parent has no number there."""
    value = parent_config.get(key)
    return factor * float(value) if isinstance(value, (int, float)) else None


def _open_parent(parent: Version) -> Run:
    try:
        return Run.open(parent.run_dir)
    except TunelabError as error:
        raise TunelabError(f"{parent.ref}'s run directory is unusable: {error.message}", "was it moved or deleted? register the run again") from None


def replace_model(run: Run, classifier, progress: bool) -> Run:
    """The run with its model/ replaced by `classifier`'s weights and its test metrics recomputed,
    published in one rename so the folder never holds a model and metrics that disagree."""
    from tunelab.evaluation import evaluate_run

    staging = atomic.partial_path(run.path)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(run.path, staging, ignore=lambda folder, names: ["model"] if Path(folder) == run.path else [])
    save_blend(classifier, staging / "model")
    evaluate_run(Run(staging), progress=progress)
    atomic.publish_dir(staging, run.path, overwrite=True)
    return Run.open(run.path)


def replay_sample(old_train: pd.DataFrame, new_rows: int, replay: float, seed: int) -> pd.DataFrame:
    """Old training rows making up `replay` of the mix, stratified so every old class is represented."""
    if replay <= 0 or len(old_train) == 0:
        return old_train.iloc[:0][["text", "label"]]
    wanted = min(len(old_train), round(new_rows * replay / (1 - replay)))
    shares = old_train["label"].value_counts(normalize=True)
    parts = [
        group.sample(n=min(len(group), max(1, round(wanted * shares[label]))), random_state=seed) for label, group in old_train.groupby("label", sort=True)
    ]
    return pd.concat(parts, ignore_index=True)[["text", "label"]]


def joint_class_weights(old_train: pd.DataFrame, new_train: pd.DataFrame, mix: pd.DataFrame, replay: float) -> dict[str, float]:
    """{label: rows in the old and new training data together / rows in the mix}.

    The replay sample stands in for the whole old training split: weighting each mixed row by how many
    rows of all that data it stands for makes the mix's loss an estimate of the loss of training on
    all of it, with the classes in their real proportions. Without it the mix overstates the new data's
    classes (here: a new class with 140 rows against 50 replayed rows of each old one) and the update
    widens their regions into the old ones'. Without replay the old split is not in the mix at all,
    so only the new data counts.
    """
    whole = (pd.concat([new_train["label"], old_train["label"]]) if replay > 0 else new_train["label"]).astype(str).value_counts()
    mixed = mix["label"].astype(str).value_counts()
    return {label: float(whole[label] / count) for label, count in mixed.items()}


def check_mix_covers(mix: pd.DataFrame, labels: list[str], replay: float) -> None:
    """Every class the model knows must be in the mix: a class never seen again is trained away."""
    missing = sorted(set(labels) - set(mix["label"]))
    if missing:
        raise TunelabError(
            f"the training mix has no examples of {', '.join(map(repr, missing))} (new data lacks them and --replay {replay} replays none)",
            "use --replay above 0 so old examples are mixed in, or add those classes to the new data",
        )


def classification_layer(model) -> tuple[str, Any]:
    """(name, module) of the final linear layer that outputs one logit per label."""
    import torch

    found = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module.out_features == model.config.num_labels]
    if not found:
        raise TunelabError(f"cannot find the classification layer of {type(model).__name__}", "update supports sequence classifiers with a linear head")
    return found[-1]


def grow_head(model_dir: str | os.PathLike, labels: list[str], out: str | os.PathLike, seed: int = 0) -> Path:
    """Save model_dir's classifier with a head for `labels` (in that order) to `out`.

    Each old label keeps its learned row of weights and bias (moved to its new index). Old labels may
    not disappear. A new label's row starts as a fresh head's would (small random weights, zero bias),
    so before training the old labels' logits are exactly the production model's. Why not a row
    imprinted from the new label's mean feature: the production model was trained without that label,
    so its features put the new label's texts among the old classes'. On bbc-news (tech added to four topics) an imprinted
    row called up to a quarter of the old test articles tech before training, and over three seeds
    the update then lost 1.3 old-topic points against 0.9 from a fresh row (benchmarks/forgetting.py).
    """
    import torch
    from transformers import AutoTokenizer

    from tunelab.models.pooling import load_sequence_classifier

    model = load_sequence_classifier(model_dir)  # either head: [CLS] pooler or mean-pooled (small-data recipe)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    old = [model.config.id2label[i] for i in range(model.config.num_labels)]
    dropped = sorted(set(old) - set(labels))
    if dropped:
        raise TunelabError(f"the head cannot lose labels: {', '.join(map(repr, dropped))}", "keep every old label in the label list")
    name, head = classification_layer(model)
    grown = torch.nn.Linear(head.in_features, len(labels), bias=head.bias is not None, dtype=head.weight.dtype)
    with torch.no_grad():
        # Seeded, so that an update with the same seed starts from the same weights.
        grown.weight.normal_(0.0, getattr(model.config, "initializer_range", 0.02), generator=torch.Generator().manual_seed(seed))
        if grown.bias is not None:
            grown.bias.zero_()
        for i, label in enumerate(old):
            j = labels.index(label)
            grown.weight[j] = head.weight[i]
            if grown.bias is not None:
                grown.bias[j] = head.bias[i]
    owner, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attribute, grown)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def score_sets(run: Run, sets: dict[str, pd.DataFrame]) -> dict[str, dict[str, Any]]:
    """Accuracy and macro F1 of run's model on each labelled set, and the share of rows it gives each
    label (e.g. how much of the old test set a new label took); labels it does not know count as wrong."""
    from sklearn.metrics import f1_score

    from tunelab.models.classifier import Classifier

    classifier = Classifier.load(run.model_dir, max_length=run.config.get("max_length"))
    scores = {}
    for name, frame in sets.items():
        truth = frame["label"].astype(str).to_numpy()
        predicted = [classifier.labels[i] for i in classifier.logits(frame["text"].astype(str).tolist()).argmax(axis=1)]
        correct = truth == pd.Series(predicted).to_numpy()
        per_class = {label: float(correct[truth == label].mean()) for label in sorted(set(truth))}
        scores[name] = {
            "rows": int(len(frame)),
            "accuracy": float(correct.mean()) if len(frame) else None,
            "f1_macro": float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0)),
            "accuracy_per_class": per_class,
            "predicted_share": {label: float(share) for label, share in pd.Series(predicted, dtype=object).value_counts(normalize=True).sort_index().items()},
        }
    return scores


def gate(before: dict, after: dict, tolerance: float) -> tuple[bool, list[str]]:
    """Better on the new data, and at most `tolerance` accuracy points lost on the old test set."""
    new_before, new_after = before["new"]["accuracy"], after["new"]["accuracy"]
    old_before, old_after = before["old"]["accuracy"], after["old"]["accuracy"]
    reasons, passed = [], True
    if new_after > new_before:
        reasons.append(f"new-data accuracy {new_before:.1%} -> {new_after:.1%}")
    else:
        passed = False
        reasons.append(f"not better on the new data: accuracy {new_before:.1%} -> {new_after:.1%}")
    lost = (old_before - old_after) * 100
    if lost <= tolerance + 1e-9:
        reasons.append(f"old test set {old_before:.1%} -> {old_after:.1%} (within the {tolerance:g}-point tolerance)")
    else:
        passed = False
        reasons.append(f"forgot: old test set accuracy {old_before:.1%} -> {old_after:.1%}, {lost:.1f} points lost > tolerance {tolerance:g}")
    return passed, reasons


def write_report(folder: Path, report: dict[str, Any]) -> None:
    atomic.write_json(folder / "update.json", report)
    atomic.write_text(folder / "update.html", render_html(report))


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    gate_info = report["gate"]
    verdict = "passed" if gate_info["passed"] else "failed"
    rows = []
    for key, title in (("old", "old test set"), ("new", "new data (test split)")):
        b, a = report["before"][key], report["after"][key]
        delta = (a["accuracy"] - b["accuracy"]) * 100
        rows.append(
            f"<tr><td>{title}</td><td>{b['rows']}</td><td>{b['accuracy']:.1%}</td><td>{a['accuracy']:.1%}</td>"
            f"<td class='{'up' if delta >= 0 else 'down'}'>{delta:+.1f}</td><td>{b['f1_macro']:.3f}</td><td>{a['f1_macro']:.3f}</td></tr>"
        )
    classes = sorted(set(report["after"]["old"]["accuracy_per_class"]) | set(report["after"]["new"]["accuracy_per_class"]))
    class_rows = []
    for label in classes:
        cells = []
        for key in ("old", "new"):
            b = report["before"][key]["accuracy_per_class"].get(label)
            a = report["after"][key]["accuracy_per_class"].get(label)
            cells.append(f"<td>{'' if b is None else f'{b:.1%}'}</td><td>{'' if a is None else f'{a:.1%}'}</td>")
        class_rows.append(f"<tr><td>{e(label)}</td>{''.join(cells)}</tr>")
    reasons = "".join(f"<li>{e(r)}</li>" for r in gate_info["reasons"])
    added = ", ".join(report["labels"]["added"]) or "none"
    stage = report.get("stage", "not registered yet")
    weights = report.get("loss_weight_per_label")
    weights_line = (
        f"<p>Loss weight per label ({e(report['class_weights'])}): "
        + ", ".join(f"{e(label)} {weight:.2f}" for label, weight in sorted(weights.items()))
        + ".</p>"
        if weights
        else ""
    )
    blend = report.get("blend")
    blend_line = "<p>Weights kept as trained (no blending).</p>"
    if blend:
        tried = ", ".join(f"{alpha}: {score:.1%}" for alpha, score in blend["eval_mean_accuracy"].items())
        blend_line = (
            f"<p>Blend: {blend['alpha']:g} of the way from the production weights to the trained ones, chosen by the mean of "
            f"old-eval and new-eval accuracy ({e(tried)}).</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>update {e(report["name"])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.up{{color:#060}}.down{{color:#a00}}
.verdict{{font-size:1.2rem;font-weight:bold;color:{"#060" if gate_info["passed"] else "#a00"}}}</style></head><body>
<h1>Update of {e(report["name"])}</h1>
<p>From {e(report["parent"])} with new data <code>{e(str(report["new_data"]))}</code>; replay {report["replay"]:.0%}
({report["rows"]["replay"]} old rows mixed with {report["rows"]["new_train"]} new); new labels: {e(added)}.</p>
<p class="verdict">Gate {verdict} — version {e(str(report.get("version", "?")))} is {e(stage)}</p><ul>{reasons}</ul>
{weights_line}
{blend_line}
<h2>Before / after</h2>
<table><tr><th>set</th><th>rows</th><th>accuracy before</th><th>accuracy after</th><th>points</th><th>F1 before</th><th>F1 after</th></tr>
{"".join(rows)}</table>
<h2>Accuracy per class</h2>
<table><tr><th>class</th><th>old set before</th><th>old set after</th><th>new set before</th><th>new set after</th></tr>
{"".join(class_rows)}</table>
<p>Candidate run: <code>{e(report["candidate_run"])}</code></p>
</body></html>
"""
