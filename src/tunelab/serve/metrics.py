"""Prometheus metrics for the service: requests by status, latency, batch sizes, queue depth.

Each app gets its own registry, so several apps in one process (tests, hot swap) never share counts.
With `--workers N` the workers write their figures into the one folder named by PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode; `serve` makes the folder and removes it), and /metrics on any
worker answers for all of them: counts and histograms summed, the queue depth summed over live workers,
`tunelab_model_ready` the lowest of them (1 once every worker has its model).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when it is imported: set before a worker starts

# Latency of a tiny request on a CPU is a few ms; a large batch behind a full queue can take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.queue_depth = queue_depth
        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "HTTP requests by route and status code", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "tunelab_request_latency_seconds",
            "Time from request to response",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram("tunelab_batch_size_texts", "Texts per forward pass", buckets=BATCH_BUCKETS, registry=self.registry)
        self.texts = Counter("tunelab_predicted_texts", "Texts scored", registry=self.registry)
        self.queue = Gauge("tunelab_queue_depth_texts", "Texts waiting for a forward pass", registry=self.registry, multiprocess_mode="livesum")
        if not self.multiprocess:  # read at scrape time; a worker's files hold only values set, so workers set it as requests come and go
            self.queue.set_function(queue_depth)
        self.ready = Gauge("tunelab_model_ready", "1 once the model is loaded", registry=self.registry, multiprocess_mode="livemin")

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        self._queue_changed()

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.texts.inc(size)
        self._queue_changed()

    def _queue_changed(self) -> None:
        if self.multiprocess:
            self.queue.set(self.queue_depth())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        self._queue_changed()
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
