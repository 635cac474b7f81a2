"""hf_trainer.py: the one TrainingArguments builder and the training facts, shared by the encoder tasks and sft."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from tunelab import hf_trainer
from tunelab.lm.config import SFTConfig
from tunelab.lm.sft import training_arguments as sft_arguments


def test_sft_arguments_come_from_the_shared_builder_without_checkpoints(tmp_path):
    config = SFTConfig(data="x.jsonl", packing=True)
    args = sft_arguments(config, tmp_path / "checkpoints", "fp32", 800)
    assert (args.eval_strategy, args.save_strategy, args.load_best_model_at_end, args.metric_for_best_model) == ("epoch", "no", False, None)
    assert args.prediction_loss_only  # the eval loss is all sft reads; gathering logits would cost gigabytes
    assert args.train_sampling_strategy == "random"  # a packed batch is one row: nothing to group by length
    assert args.logging_steps == 5  # about 20 logs per epoch, as for the encoder tasks: 800 rows / batch 8 = 100 steps
    assert (args.learning_rate, args.warmup_steps) == (config.learning_rate, config.warmup)
    assert args.seed == args.data_seed == config.seed


def test_a_partial_last_batch_is_a_step_when_counting_logs(tmp_path):
    config = SFTConfig(data="x.jsonl", batch_size=10)
    args = hf_trainer.training_arguments(config, tmp_path, batch_size=10, lr=1e-4, precision="fp32", train_rows=391, group_by_length=True)
    assert args.logging_steps == 2  # 40 steps (the last one partial), as the Trainer counts them
    assert args.train_sampling_strategy == "group_by_length"


def test_training_facts_are_shared_and_each_caller_adds_its_own():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    trainer = SimpleNamespace(model=model)
    trained = hf_trainer.Trained(SimpleNamespace(metrics={"train_loss": 0.5, "epoch": 2.0}, global_step=12), seconds=3.0)
    facts = hf_trainer.training_facts(trainer, trained, "fp32", method="lora")
    train = facts["train"]
    assert (train["train_runtime_s"], train["train_loss"], train["epochs"], train["steps"], train["method"]) == (3.0, 0.5, 2.0, 12, "lora")
    assert (train["parameters"], train["trainable_parameters"]) == (15 + 8, 8)
    assert train["peak_memory_mb"] > 0 and facts["environment"]["precision"] == "fp32"
