"""The set-up every encoder fine-tuning task shares (training/trainer_setup.py): one set of Trainer arguments and callbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tunelab.callbacks import HistoryCallback, RichProgressCallback, trainer_callbacks
from tunelab.config import ExtractiveQAConfig, MultiLabelConfig, TrainConfig
from tunelab.training.trainer_setup import RunSetup, training_arguments


def setup_in(tmp_path) -> RunSetup:
    return RunSetup(tmp_path / "run", tmp_path / ".run.partial", 1, "fp32", SimpleNamespace(is_main_process=True, num_processes=1))


@pytest.mark.parametrize(
    ("config", "best_metric", "greater_is_better"),
    [
        (TrainConfig(), "accuracy", True),
        (MultiLabelConfig(data="x.csv"), "loss", False),
        (ExtractiveQAConfig(data="x.jsonl"), "loss", False),
    ],
)
def test_every_task_gets_the_same_arguments_keeping_its_best_epoch(tmp_path, config, best_metric, greater_is_better):
    args = training_arguments(config, setup_in(tmp_path), 8, 1e-4, 800, best_metric=best_metric)
    assert (args.metric_for_best_model, args.greater_is_better) == (best_metric, greater_is_better)
    assert args.output_dir == str(tmp_path / ".run.partial" / "checkpoints")
    assert (args.eval_strategy, args.save_strategy, args.load_best_model_at_end) == ("epoch", "epoch", True)
    assert args.save_total_limit == config.keep_checkpoints == 1
    assert args.logging_steps == 5  # about 20 logs per epoch: 800 rows / batch 8 = 100 steps
    assert args.seed == args.data_seed == config.seed


def test_the_callbacks_follow_progress_and_early_stopping(tmp_path):
    from transformers import EarlyStoppingCallback

    quiet = trainer_callbacks(tmp_path / "history.jsonl", None)
    assert [type(c) for c in quiet] == [HistoryCallback]
    shown = trainer_callbacks(tmp_path / "history.jsonl", 32, early_stopping=2)
    assert [type(c) for c in shown] == [HistoryCallback, RichProgressCallback, EarlyStoppingCallback]
    assert shown[1].samples_per_step == 32 and shown[2].early_stopping_patience == 2
