"""How long training takes: measured over the first steps and updated as it runs.

Speed differs several-fold between CPUs (bf16 autocast on AVX-512 BF16 / AMX, fp32 elsewhere), so
a duration is only ever a measurement on this machine, never a figure from the docs.
"""

from __future__ import annotations

import math
import statistics
from collections import deque


class DurationEstimate:
    """Seconds left in a run of `max_steps` optimizer steps that pauses at every epoch end.

    A step costs the median of the recent step intervals, which one slow step does not move. The
    pause at an epoch end (evaluation, checkpoint) is measured apart, as the interval after it less
    one step, and counted once for every epoch end still to come. The first observed step is the
    reference point only: it carries the warm-up (allocation, first batches).
    """

    def __init__(self, max_steps: int, steps_per_epoch: int, window: int = 50):
        self.max_steps = max_steps
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.intervals: deque[float] = deque(maxlen=window)
        self.pauses: list[float] = []
        self.measured = 0  # steps whose time is in `intervals` (or was, before the window moved on)
        self.first_step: int | None = None
        self.last: tuple[int, float] | None = None

    def observe(self, step: int, now: float, after_epoch_end: bool = False) -> None:
        """Step `step` ended at `now` (seconds); `after_epoch_end` when an epoch ended since the last call."""
        if self.last is None:
            self.first_step = step
        else:
            last_step, last_time = self.last
            steps, seconds = step - last_step, now - last_time
            if steps <= 0:
                return
            if after_epoch_end and self.intervals:
                self.pauses.append(max(0.0, seconds - steps * self.seconds_per_step))
            else:
                # With one step per epoch no interval is free of a pause: the pause is part of the step.
                self.intervals.extend([seconds / steps] * min(steps, self.intervals.maxlen or steps))
                self.measured += steps
        self.last = (step, now)

    @property
    def seconds_per_step(self) -> float | None:
        return statistics.median(self.intervals) if self.intervals else None

    @property
    def pause(self) -> float | None:
        """Mean seconds an epoch end adds, once one has been measured."""
        return sum(self.pauses) / len(self.pauses) if self.pauses else None

    def epoch_ends_left(self, step: int) -> int:
        """Epoch ends at or after `step` (the one at `step` has not paused yet when its step ends)."""
        first = max(1, math.ceil(step / self.steps_per_epoch))
        last = (self.max_steps - 1) // self.steps_per_epoch  # the last full epoch before the final step
        return max(0, last - first + 1) + (1 if step <= self.max_steps else 0)

    def seconds_left(self, step: int) -> float | None:
        per_step = self.seconds_per_step
        if per_step is None:
            return None
        return max(0, self.max_steps - step) * per_step + self.epoch_ends_left(step) * (self.pause or 0.0)


def steps_to_measure(steps: int, most: int = 10) -> int:
    """How many steps the first estimate waits for: `most`, or a tenth of a short run, at least two."""
    return max(2, min(most, steps // 10))


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def first_estimate(estimate: DurationEstimate, step: int, elapsed: float) -> str:
    """The line printed once the first steps are measured: the whole run's duration and what it rests on."""
    left = estimate.seconds_left(step) or 0.0
    pause = estimate.pause
    basis = f"{estimate.seconds_per_step:.3g} s a step over {estimate.measured} steps, {estimate.max_steps} steps in all"
    basis += f"; {pause:.3g} s per epoch end" if pause is not None else "; the evaluation at each epoch end is added once measured"
    return f"estimated training time: about {human_duration(elapsed + left)} ({human_duration(left)} left; {basis})"
