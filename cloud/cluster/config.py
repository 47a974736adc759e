"""``ClusterConfig``: how ``pdlink cloud serve --cluster ...`` lays out the disaggregated cloud (checked once).

The gateway's own settings (port, auth, limits, the TTFT budget that bounds forwarding) stay in
:class:`~pdlink.cloud.config.CloudConfig`; this adds the instances, the groups and the router.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdlink.cloud.cluster.forwarding import ROUTERS
from pdlink.cloud.cluster.groups import GroupRule, group_names
from pdlink.cloud.cluster.instance_spec import InstanceSpec
from pdlink.cloud.config import CloudConfig

CLUSTER_KINDS = ("local", "inproc")  # or ray://HOST:PORT


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The disaggregated cloud: ``prefill`` + ``decode`` instances per scenario group, on Ray or in process."""

    cluster: str = "local"  # local: start a Ray runtime here; ray://HOST:PORT: join one; inproc: no Ray (tests)
    prefill: int = 1  # prefill instances per group
    decode: int = 1  # decode instances per group
    groups: tuple[str, ...] = ()  # scenario rules NAME:key=value,... (cloud/cluster/groups.py); default group always
    router: str = "on_demand"  # on_demand (P/D-Serve) or queue_report (the baseline)
    prefill_slots: int = 4  # prefill batch per instance (requests held until their KV has left)
    decode_slots: int = 16  # decode batch per instance
    baseline_queue: int = 32  # local queue of a prefill instance under queue_report routing
    instance_threads: int = 1  # torch / TVM threads per instance
    instance_cpus: float = 0.5  # Ray CPUs each instance actor reserves (fractional on a small box)
    ray_cpus: int = 0  # CPUs a local Ray runtime announces (0 = this machine's)
    report_interval_s: float = 0.1  # queue reports (queue_report routing only)
    retry_s: float = 0.05  # pause between two rounds of offers when every prefill instance said busy
    transfer_kv: bool = True  # False: decode instances always re-prefill (the benchmark's peer)

    def __post_init__(self):
        if self.cluster not in CLUSTER_KINDS and not self.cluster.startswith("ray://"):
            raise ValueError(f"--cluster must be local, inproc or ray://HOST:PORT, got {self.cluster!r}")
        if self.prefill < 1 or self.decode < 1:
            raise ValueError("--prefill and --decode need at least 1 instance each (per group)")
        if self.router not in ROUTERS:
            raise ValueError(f"--router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        for name in ("prefill_slots", "decode_slots", "baseline_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.instance_threads < 0 or self.ray_cpus < 0 or not self.instance_cpus > 0:
            raise ValueError("--instance-threads and --ray-cpus must be >= 0 and --instance-cpus > 0")
        if not self.report_interval_s > 0 or not self.retry_s > 0:
            raise ValueError("--report-interval-s and --retry-s must be > 0")
        self.rules()  # each rule parses

    def rules(self) -> list[GroupRule]:
        return [GroupRule.parse(text) for text in self.groups]

    def instance_specs(self, cloud: CloudConfig) -> list[InstanceSpec]:
        """Every instance of every group, named ``GROUP-prefill-I`` / ``GROUP-decode-I``."""
        context = cloud.max_prompt_tokens + cloud.max_leading_tokens
        queue = self.baseline_queue if self.router == "queue_report" else 0
        specs = []
        for group in group_names(self.rules()):
            for role, count, slots in (("prefill", self.prefill, self.prefill_slots),
                                       ("decode", self.decode, self.decode_slots)):
                for i in range(count):
                    specs.append(InstanceSpec(
                        f"{group}-{role}-{i}", role, group, cloud.model, cloud.model_id, self.instance_threads,
                        slots, queue if role == "prefill" else 0, context, cloud.prefill_chunk_tokens,
                        cloud.step_token_budget, cloud.min_step_s))
        return specs
