"""The one progress bar for long loops: description, bar, done/total and the estimated time left."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence


def progress_bar(enabled: bool, total: int | None = None):
    """A rich Progress (add tasks to it), or a null context when disabled (--json, tests).

    `total` is accepted for callers that size their task from it; the bar itself needs none."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)


def track(items: Sequence, description: str, enabled: bool = True) -> Iterator:
    """Iterate `items` with the bar advancing one per item (a plain iteration when disabled)."""
    if not enabled:
        yield from items
        return
    with progress_bar(True, len(items)) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task, 1)
