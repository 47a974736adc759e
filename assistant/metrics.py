"""The assistant's Prometheus metrics (``/metrics``), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class AssistantMetrics:
    """Requests, tokens by origin, fallbacks, TTFT, in-flight requests, decode batching and prefix reuse."""

    def __init__(self, assistant):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pdlink_assistant_requests", "Requests by endpoint, mode and HTTP status",
                                ["endpoint", "mode", "status"], registry=r)
        self.tokens = Counter("pdlink_assistant_tokens", "Generated tokens by origin", ["origin"], registry=r)
        self.prompt_tokens = Counter("pdlink_assistant_prompt_tokens", "Prompt tokens, and those reused from a "
                                     "kept KV cache", ["kind"], registry=r)
        self.fallbacks = Counter("pdlink_assistant_fallbacks", "pd requests the device finished alone, by reason",
                                 ["reason"], registry=r)
        self.ttft = Histogram("pdlink_assistant_ttft_seconds", "Time to first shown token", ["mode"], registry=r,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
        self.cloud_seconds = Counter("pdlink_assistant_cloud_busy_seconds", "Cloud seconds used", registry=r)
        Gauge("pdlink_assistant_inflight", "Requests in flight", registry=r).set_function(lambda: assistant.inflight)
        r.register(_BatchCollector(assistant))

    def observe(self, endpoint: str, mode: str, result) -> None:
        """Count one finished request (a ``SessionResult``)."""
        self.requests.labels(endpoint, mode, "200").inc()
        for origin in ("cloud", "device"):
            if n := result.origins.count(origin):
                self.tokens.labels(origin).inc(n)
        self.prompt_tokens.labels("total").inc(result.prompt_tokens)
        self.prompt_tokens.labels("reused").inc(result.cached_prompt_tokens)
        if result.fallback:
            self.fallbacks.labels(result.fallback.split(":")[0]).inc()
        if result.ttft_s is not None:
            self.ttft.labels(mode).observe(result.ttft_s)
        if result.cloud_busy_s:
            self.cloud_seconds.inc(result.cloud_busy_s)


class _BatchCollector:
    """The shared engine's batching counts and the kept conversations, read at scrape time."""

    def __init__(self, assistant):
        self.assistant = assistant

    def collect(self):
        stats = self.assistant.batching.core.stats
        steps = CounterMetricFamily("pdlink_assistant_engine_steps", "Engine steps by kind", labels=["kind"])
        steps.add_metric(["decode"], stats.decode_steps)
        steps.add_metric(["prefill"], stats.prefill_steps)
        yield steps
        yield CounterMetricFamily("pdlink_assistant_decode_rows", "Decode rows run (batched)", value=stats.decode_rows)
        sizes = CounterMetricFamily("pdlink_assistant_decode_batches", "Decode steps by batch size", labels=["size"])
        for size, n in sorted(stats.batch_sizes.items()):
            sizes.add_metric([str(size)], n)
        yield sizes
        yield GaugeMetricFamily("pdlink_assistant_kept_conversations", "Conversations whose KV cache is kept",
                                value=len(self.assistant.kv))
