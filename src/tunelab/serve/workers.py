"""`serve --workers N`: uvicorn's worker supervisor, plus the clean-up prometheus-client's multiprocess mode asks of it.

In multiprocess mode each worker keeps its figures in files named after its pid. A worker that leaves —
died or hung and replaced, retired by a SIGHUP restart, dropped by a SIGTTOU scale-down — would leave its
live gauges (queue depth, model ready) in every later scrape; `mark_process_dead` removes them. Its
counters and histograms stay: the requests it answered were answered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from uvicorn.supervisors import Multiprocess

from tunelab.serve.metrics import MULTIPROC_ENV


class MetricsCleaningSupervisor(Multiprocess):
    """uvicorn's Multiprocess; after each step that can replace or drop a worker, the workers gone are marked dead."""

    def keep_subprocess_alive(self) -> None:
        self._marking_departed(super().keep_subprocess_alive)

    def restart_all(self) -> None:
        self._marking_departed(super().restart_all)

    def handle_ttou(self) -> None:
        self._marking_departed(super().handle_ttou)

    def _marking_departed(self, step: Callable[[], None]) -> None:
        before = list(self.processes)
        step()
        folder = os.environ.get(MULTIPROC_ENV)
        for process in before:
            if folder and process not in self.processes and process.pid is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(process.pid, folder)


def run_workers(app: str, workers: int, **options: Any) -> None:
    """Serve the app factory at import string `app` from `workers` processes until SIGINT/SIGTERM, as uvicorn.run does for workers > 1."""
    import uvicorn

    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    socket = config.bind_socket()
    try:
        MetricsCleaningSupervisor(config, sockets=[socket]).run()
    finally:
        socket.close()
