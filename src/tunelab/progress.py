"""The one progress bar for long loops: description, bar, done/total and the estimated time left."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence


def progress_bar(enabled: bool):
    """A rich Progress (add tasks to it, each with its own total), or a null context when disabled (--json, tests)."""
    if not enabled:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)


def track(items: Sequence, description: str, enabled: bool = True) -> Iterator:
    """Iterate `items` with the bar advancing one per item (a plain iteration when disabled)."""
    if not enabled:
        yield from items
        return
    with progress_bar(True) as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task, 1)
