"""Fine-tuning an encoder for text classification: the recipe, top to bottom.

set up -> load data -> split -> recipe -> tokenizer -> max length -> profile -> model -> plan -> stage
-> tokenize -> Trainer -> train -> save model -> evaluate on the test split -> publish the run directory.

The steps every encoder task shares are training/trainer_setup.py's; what is the classifier's own
is here: the labels, the class weights and the AccuracyTrainer.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tunelab import atomic  # noqa: E402
from tunelab.config import TrainConfig, resolve_recipe  # noqa: E402
from tunelab.data import load_splits, profile_splits  # noqa: E402
from tunelab.data.tokenize import tokenize_frame  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.run import Run  # noqa: E402
from tunelab.textpairs import frame_inputs  # noqa: E402
from tunelab.training import linear_probe, trainer_setup  # noqa: E402
from tunelab.training.resume import resume_point  # noqa: E402
from tunelab.training.trainer import AccuracyTrainer, balanced_class_weights, classification_scores  # noqa: E402


def train(config: TrainConfig, progress: bool = True, resume: bool = False) -> Run:
    """Fine-tune config.model on config.data and return the finished run directory.

    Launched by torchrun/accelerate, every process runs this function; only the main process
    writes the run directory. With resume, training continues from the last checkpoint that a
    killed run left in its staging folder.
    """
    setup = trainer_setup.start_run(config)
    splits, dropped = load_splits(config)  # stratified, seeded, checked before anything expensive
    # The recipe (default, or small-data below config.SMALL_DATA_ROWS training rows) fills the settings not given.
    config = resolve_recipe(config, len(splits["train"]))
    point = resume_point(setup.staging, config.epochs, setup.processes) if resume else None
    checkpoint = point.checkpoint if point else None
    labels = sorted(splits["train"]["label"].unique())
    pretrained = trainer_setup.load_pretrained(config)
    max_length = trainer_setup.text_max_length(config, pretrained, frame_inputs(splits["train"]))  # from the data rather than the model's 512
    profile = {**profile_splits(splits, pretrained.tokenizer, pretrained.limit, dropped), "max_length": max_length}
    lr = trainer_setup.resolve_lr(config.lr, pretrained.config)
    datasets = tokenize_splits(splits, pretrained.tokenizer, max_length, labels)
    probe = linear_probe.HeadProbe(config.head_init == "linear-probe" and checkpoint is None, datasets, pretrained.tokenizer, config.seed)
    model = trainer_setup.build_classifier(pretrained.folder, config, labels, probe.init_head)
    plan = trainer_setup.plan_batch(config, model, pretrained.config, max_length, setup)
    if progress and setup.is_main:
        trainer_setup.print_plan(config, splits, labels, max_length, lr, setup, plan, point)
    trainer_setup.stage_run(setup, config, splits, labels, profile, checkpoint, max_length=max_length, batch_size=plan.batch_size, lr=lr)
    trainer = build_classifier_trainer(config, setup, model, datasets, pretrained.tokenizer, labels, plan.batch_size, lr, progress)
    trained = trainer_setup.train_timed(trainer, checkpoint)  # the best checkpoint by eval accuracy is loaded at the end
    if setup.is_main:
        facts = trainer_setup.training_metrics(trainer, trained, setup)
        probe.record(facts)
        save_and_evaluate(config, setup, trainer, facts, progress)
    setup.state.wait_for_everyone()
    return Run.open(setup.out)


def tokenize_splits(splits, tokenizer, max_length: int, labels: list[str]) -> dict:
    """Input IDs, attention masks and label ids, unpadded: each batch is padded to its longest example."""
    label2id = {label: i for i, label in enumerate(labels)}
    return {name: tokenize_frame(split, tokenizer, max_length, label2id) for name, split in splits.items()}


def build_classifier_trainer(
    config: TrainConfig, setup: trainer_setup.RunSetup, model, datasets, tokenizer, labels, batch_size: int, lr: float, progress: bool
):
    """The AccuracyTrainer: class-weighted loss, the length-window sampler, layer-wise learning-rate decay."""
    args = trainer_setup.training_arguments(config, setup, batch_size, lr, len(datasets["train"]))
    return trainer_setup.build_trainer(
        AccuracyTrainer,
        config,
        setup,
        args,
        model,
        datasets,
        tokenizer,
        progress,
        class_weights=resolve_class_weights(config.class_weights, datasets["train"]["labels"], labels),
        length_window_batches=config.length_window,
        layer_lr_decay=config.layer_lr_decay,
        compute_metrics=classification_scores,
    )


def save_and_evaluate(config: TrainConfig, setup: trainer_setup.RunSetup, trainer, train_facts: dict, progress: bool) -> None:
    """model/, metrics.json with the training facts, the test-split evaluation and report; then publish."""
    from tunelab.evaluation import evaluate_run

    trainer_setup.save_model(trainer, setup.staging / "model")
    atomic.write_json(setup.staging / "metrics.json", train_facts)
    evaluate_run(Run(setup.staging), progress=progress, baseline=config.baseline)
    trainer_setup.publish_run(setup, config.overwrite)


def quickstart_config(out: str | None = None) -> TrainConfig:
    """minilm on bbc-news, tuned to finish in minutes on a laptop CPU.

    News articles run to 500+ tokens, but the headline and first paragraph settle the topic:
    128 tokens keep >95% accuracy at a quarter of the compute. MiniLM's small hidden size
    wants a larger learning rate than BERT-base's usual 5e-5.
    """
    return TrainConfig(model="minilm", data="bbc-news", max_length=128, epochs=2, lr=2e-4, batch_size=16, out=out)


def resolve_class_weights(setting: str | dict[str, float], train_labels: list[int], labels: list[str]) -> torch.Tensor | None:
    """The loss weight of each label id, or None for an unweighted loss."""
    if setting == "none":
        return None
    if setting == "balanced":
        return balanced_class_weights(train_labels, len(labels))
    if setting == "sqrt-balanced":
        return balanced_class_weights(train_labels, len(labels)).sqrt()
    missing = [label for label in labels if label not in setting]
    if missing:
        raise TunelabError(f"class_weights has no weight for {', '.join(map(repr, missing[:5]))}", "give a weight for every label, or use 'balanced'")
    return torch.tensor([float(setting[label]) for label in labels])
