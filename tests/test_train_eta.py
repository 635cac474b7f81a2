"""The training duration estimate: measured over the first steps, epoch-end pauses counted, shown while training."""

from __future__ import annotations

import re

import pytest

from tunelab.eta import DurationEstimate, human_duration, steps_to_measure


def timeline(step_seconds: dict[int, float], pause: float, steps_per_epoch: int, last: int) -> list[tuple[int, float, bool]]:
    """(step, time it ended, whether an epoch ended before it) for steps 1..last; 0.5 s a step unless given."""
    now, out = 0.0, []
    for step in range(1, last + 1):
        after_end = step > 1 and (step - 1) % steps_per_epoch == 0
        now += step_seconds.get(step, 0.5) + (pause if after_end else 0.0)
        out.append((step, now, after_end))
    return out


def test_step_time_is_robust_and_epoch_end_pauses_are_counted_apart():
    estimate = DurationEstimate(max_steps=30, steps_per_epoch=10)
    for step, now, after_end in timeline({1: 9.0, 6: 5.0}, pause=3.0, steps_per_epoch=10, last=15):  # warm-up, one slow step
        estimate.observe(step, now, after_epoch_end=after_end)
    assert estimate.measured == 13  # steps 2..15, less step 11 (the pause); step 1 is the reference (warm-up)
    assert estimate.seconds_per_step == pytest.approx(0.5)  # the slow step does not move the median
    assert estimate.pause == pytest.approx(3.0)
    # 15 steps left at 0.5 s, and the pauses after steps 20 and 30.
    assert estimate.seconds_left(15) == pytest.approx(15 * 0.5 + 2 * 3.0)
    assert estimate.seconds_left(30) == pytest.approx(3.0)  # the last evaluation is still to come


def test_before_any_pause_is_measured_only_steps_count():
    estimate = DurationEstimate(max_steps=100, steps_per_epoch=50)
    for step, now, after_end in timeline({}, pause=3.0, steps_per_epoch=50, last=12):
        estimate.observe(step, now, after_epoch_end=after_end)
    assert estimate.pause is None
    assert estimate.seconds_left(12) == pytest.approx(88 * 0.5)


def test_one_step_per_epoch_folds_the_pause_into_the_step():
    estimate = DurationEstimate(max_steps=6, steps_per_epoch=1)
    for step, now, after_end in timeline({}, pause=1.5, steps_per_epoch=1, last=4):
        estimate.observe(step, now, after_epoch_end=after_end)
    assert estimate.seconds_per_step == pytest.approx(2.0) and estimate.pause == pytest.approx(0.0)
    assert estimate.seconds_left(4) == pytest.approx(2 * 2.0)


def test_epoch_ends_left_with_a_fractional_last_epoch():
    estimate = DurationEstimate(max_steps=25, steps_per_epoch=10)  # epochs end after steps 10, 20 and 25
    assert [estimate.epoch_ends_left(step) for step in (1, 10, 11, 20, 21, 25)] == [3, 3, 2, 2, 1, 1]


def test_nothing_to_say_before_a_step_is_measured():
    estimate = DurationEstimate(max_steps=10, steps_per_epoch=5)
    assert estimate.seconds_left(0) is None
    estimate.observe(1, 4.0)
    assert estimate.seconds_left(1) is None  # the first step is the reference only


def test_steps_to_measure_and_durations():
    assert (steps_to_measure(1000), steps_to_measure(60), steps_to_measure(5)) == (10, 6, 2)
    assert [human_duration(s) for s in (4.4, 61, 3 * 60 + 5, 3600 + 5 * 60)] == ["4 s", "1 min 01 s", "3 min 05 s", "1 h 05 min"]


def test_training_prints_the_estimate_and_the_time_left(tiny_bert, tmp_path, capsys):
    from tests.conftest import sentiment_frame
    from tunelab.config import TrainConfig
    from tunelab.training.classify import train

    sentiment_frame(rows_per_class=60).to_csv(tmp_path / "d.csv", index=False)
    config = TrainConfig(model=str(tiny_bert), data=str(tmp_path / "d.csv"), epochs=3, batch_size=8, precision="fp32", out=str(tmp_path / "run"))
    run = train(config, progress=True)
    err = capsys.readouterr().err
    steps = run.metrics["train"]["steps"]

    assert f"duration: measured over the first {steps_to_measure(steps)} steps" in err  # the plan says when
    estimates = re.findall(r"estimated training time: about (.+?) \((.+?) left; ([\d.]+) s a step over (\d+) steps, (\d+) steps in all", err)
    assert len(estimates) == 1, err
    _, _, per_step, measured, total = estimates[0]
    assert int(measured) == steps_to_measure(steps) and int(total) == steps
    # The estimate rests on this machine's steps: the measured step time times the steps is in the
    # range of the run's training time. The range is wide at the bottom: with a tiny model the run's time
    # is mostly the evaluations and loading the best model, and more so on a busy machine (0.2 failed there).
    runtime = run.metrics["train"]["train_runtime_s"]
    assert 0.03 * runtime < float(per_step) * steps < 2 * runtime
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ") and "eval loss" in line]
    assert len(epoch_lines) == 3
    assert all(re.search(r"about \d+ (s|min \d\d s) left$", line) for line in epoch_lines[:2]), epoch_lines
    assert re.search(r"eta (\d+ s|\d+ min \d\d s)", err)  # the log lines carry the time left too
