"""Peak resident memory of this process during a block (sampled; RSS covers torch's allocations).

Not hardware.peak_memory_mb: getrusage's ru_maxrss is the high-water mark of the whole process,
so once one stage has peaked it reports that peak for every later stage; a stage's own peak needs
the current RSS, sampled while the stage runs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20
    except ImportError:  # Linux fallback
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """with PeakMemory() as peak: ...; peak.mb is the highest RSS seen (sampled every 50 ms)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.mb = rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.mb = max(self.mb, rss_mb())
