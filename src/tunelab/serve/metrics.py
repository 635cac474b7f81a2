"""Prometheus metrics for the service: requests by status, latency, batch sizes, queue depth.

Each app gets its own registry, so several apps in one process (tests, hot swap) never share counts.
With `--workers N` every worker process keeps its own figures.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency of a tiny request on a CPU is a few ms; a large batch behind a full queue can take seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], float]):
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
        self.queue = Gauge("tunelab_queue_depth_texts", "Texts waiting for a forward pass", registry=self.registry)
        self.queue.set_function(queue_depth)
        self.ready = Gauge("tunelab_model_ready", "1 once the model is loaded", registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.texts.inc(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
