"""Prometheus metrics of the cluster, per scenario group and per instance, in the gateway's registry
(beside the protocol counters of :class:`~pdlink.cloud.metrics.CloudMetrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pdlink.cloud.metrics import TTFT_BUCKETS


class ClusterMetrics:
    """Offers and their outcomes, gateway rejections, fail-overs, TTFT and open requests, labelled."""

    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.offers = Counter("pdlink_cluster_offers", "Prefill offers by group, instance and outcome "
                              "(accepted, busy, dead)", ["group", "instance", "outcome"], registry=r)
        self.rejected = Counter("pdlink_cluster_rejected", "Requests given up by forwarding (TTFT budget spent "
                                "or no live instance)", ["group"], registry=r)
        self.failovers = Counter("pdlink_cluster_failovers", "Requests moved off a dead instance, by role",
                                 ["group", "role"], registry=r)
        self.kv = Counter("pdlink_cluster_kv_handoffs", "Prefill -> decode hand-overs: kv (imported), "
                          "failed (a KV came but could not be used: re-prefilled) or reprefill (no KV sent)", ["group", "path"], registry=r)
        self.ttft = Histogram("pdlink_cluster_ttft_seconds", "Request received to first token, by group", ["group"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.open = Gauge("pdlink_cluster_instance_open_requests", "Requests the gateway has open on an instance",
                          ["group", "instance", "role"], registry=r)
        self.alive = Gauge("pdlink_cluster_instance_alive", "1 while the instance answers", ["group", "instance",
                                                                                              "role"], registry=r)
        self.finished = Counter("pdlink_cluster_requests", "Finished requests by group and reason",
                                ["group", "reason"], registry=r)
