"""The server's Prometheus metrics (prometheus_client), in a registry of its own so that
several servers in one process (tests) do not share counters."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - re-exported for the route

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Inference requests by API and status, their latency, images, batch sizes and model
    time, errors by API and cause, and the queue's length."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # api: "v1" (/v1/predict) or "v2" (the Open Inference Protocol's infer)
        self.requests = Counter("reslab_requests", "inference requests by API and status",
                                ["api", "status"], registry=r)
        self.latency = Histogram("reslab_request_seconds", "inference request latency, "
                                 "received to answered", ["api"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.images = Counter("reslab_images", "images classified", registry=r)
        self.batch_size = Histogram("reslab_batch_size", "images per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("reslab_batch_seconds", "seconds per model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("reslab_errors", "requests answered with an error, by API "
                              "and cause", ["api", "error"], registry=r)
        self.queued = Gauge("reslab_queue_images", "images waiting for the model", registry=r)

    def batch(self, n: int, seconds: float) -> None:
        self.batch_size.observe(n)
        self.batch_seconds.observe(seconds)
        self.images.inc(n)

    def text(self) -> bytes:
        return generate_latest(self.registry)
