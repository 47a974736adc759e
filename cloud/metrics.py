"""Prometheus metrics of one cloud server, in its own ``CollectorRegistry`` (two servers in one process
do not share counters). Gauges that mirror the scheduler are read from its stats snapshot at scrape time."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

from pdlink.cloud.scheduler import SchedulerStats
from pdlink.common.protocol import DONE_REASONS, REJECT_REASONS

CONTENT_TYPE = CONTENT_TYPE_LATEST
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


class CloudMetrics:
    """The server's counters; ``render()`` gives the Prometheus text exposition."""

    def __init__(self, stats: Callable[[], SchedulerStats]):
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._stats = stats
        self._gauges = {  # SchedulerStats field -> gauge
            "queued": Gauge("pdlink_cloud_queue_depth", "Requests waiting for or in prefill", registry=r),
            "requests_live": Gauge("pdlink_cloud_requests_in_flight", "Requests accepted and not finished",
                                   registry=r),
            "decoding": Gauge("pdlink_cloud_requests_decoding", "Requests generating leading tokens", registry=r),
            "kv_sequences": Gauge("pdlink_cloud_kv_sequences", "Sequences holding KV cache in the backend",
                                  registry=r),
            "prefill_tok_s": Gauge("pdlink_cloud_prefill_tokens_per_second",
                                   "Moving average of measured prefill speed (admission control uses it)",
                                   registry=r),
        }
        self.connections = Gauge("pdlink_cloud_connections", "Open websocket connections", registry=r)
        self.ttft = Histogram("pdlink_cloud_ttft_seconds", "Request received to first token sent",
                              buckets=TTFT_BUCKETS, registry=r)
        self.busy = Counter("pdlink_cloud_busy_seconds", "Backend compute seconds (prefill + decode steps)",
                            registry=r)
        self.tokens = Counter("pdlink_cloud_tokens_streamed", "Leading tokens sent to clients", registry=r)
        self.prompt_tokens = Counter("pdlink_cloud_prompt_tokens", "Prompt tokens of accepted requests",
                                     registry=r)
        self.rejections = Counter("pdlink_cloud_rejections", "Requests rejected, by reason", ["reason"],
                                  registry=r)
        self.finished = Counter("pdlink_cloud_requests", "Accepted requests that finished, by reason",
                                ["finish_reason"], registry=r)
        self.errors = Counter("pdlink_cloud_protocol_errors", "Error frames sent, by code", ["code"], registry=r)
        for reason in sorted(REJECT_REASONS):
            self.rejections.labels(reason)
        for reason in sorted(DONE_REASONS):
            self.finished.labels(reason)
        self._busy_seen = 0.0

    def render(self) -> bytes:
        """Refresh the scheduler's gauges and return the exposition text."""
        stats = self._stats()
        for name, gauge in self._gauges.items():
            gauge.set(getattr(stats, name))
        busy = stats.busy_s
        if busy > self._busy_seen:  # the counter follows the scheduler's own total
            self.busy.inc(busy - self._busy_seen)
            self._busy_seen = busy
        return generate_latest(self.registry)
