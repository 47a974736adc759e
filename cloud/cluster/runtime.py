"""Start the instances: as Ray actors (a local Ray runtime, or an existing cluster), or in this process.

Ray does the distribution: every instance is an async actor reserving ``instance_cpus`` logical CPUs, so
Ray places them on whatever nodes the cluster has. ``--cluster local`` starts a Ray runtime on this
machine; ``--cluster ray://HOST:PORT`` joins one started with ``ray start --head`` (docs/cluster.md);
``--cluster inproc`` runs the same instance objects in the gateway's own process, with no Ray at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable

from pdlink.cloud.cluster.config import ClusterConfig
from pdlink.cloud.cluster.decode_instance import DecodeInstance
from pdlink.cloud.cluster.handle import LocalHandle, RayHandle
from pdlink.cloud.cluster.instance_spec import InstanceSpec
from pdlink.cloud.cluster.prefill_instance import PrefillInstance

log = logging.getLogger(__name__)

_CLASSES = {"prefill": PrefillInstance, "decode": DecodeInstance}
_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TVM_THREAD_POOL_SPIN_COUNT": "0", "TOKENIZERS_PARALLELISM": "false"}


class Runtime:
    """The started instances: ``handles`` by name and ``describe`` (each ``start()`` answer); ``close()`` ends them."""

    def __init__(self, cfg: ClusterConfig, factory: Callable[[InstanceSpec], object] | None = None):
        """``factory`` builds an in-process instance from its spec (tests give fake backends); ``inproc`` only."""
        self.cfg = cfg
        self.factory = factory or (lambda spec: _CLASSES[spec.role](spec))
        self.handles: dict[str, LocalHandle | RayHandle] = {}
        self.describe: dict[str, dict] = {}
        self._ray = False

    async def start(self, specs: list[InstanceSpec]) -> None:
        """Create every instance and wait until each has loaded its model and warmed up."""
        if self.cfg.cluster == "inproc":
            for spec in specs:
                self.handles[spec.name] = LocalHandle(spec.name, await asyncio.to_thread(self.factory, spec))
        else:
            self._init_ray()
            import ray

            for spec in specs:
                actor_cls = ray.remote(num_cpus=self.cfg.instance_cpus, max_restarts=0, max_concurrency=1000)(
                    _CLASSES[spec.role])
                actor = actor_cls.options(name=f"pdlink-{spec.name}-{os.getpid()}").remote(spec)
                self.handles[spec.name] = RayHandle(spec.name, actor)
        answers = await asyncio.gather(*(h.call("boot") for h in self.handles.values()))
        self.describe = {a["name"]: a for a in answers}

    def _init_ray(self) -> None:
        import ray

        env = {"env_vars": {**_ENV, **{k: v for k, v in os.environ.items() if k.startswith("PDLINK_")}}}
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.cfg.cluster == "local":
            # address="local": always a runtime of our own, even where a `ray start` left its address behind
            ray.init(address="local", num_cpus=self.cfg.ray_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, runtime_env=env, configure_logging=False)
        else:
            try:
                ray.init(address=self.cfg.cluster, runtime_env=env, log_to_driver=False)
            except ConnectionError as exc:
                raise ConnectionError(
                    f"cannot join the Ray cluster at {self.cfg.cluster} ({exc}); is `ray start --head "
                    "--ray-client-server-port PORT` running there, and does the gateway send the cluster's token "
                    "(RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or ~/.ray/auth_token; docs/cluster.md)?") from exc
        for sig, handler in handlers.items():  # Ray's own SIGTERM handler would exit mid-step: keep the server's
            if handler is not None:
                signal.signal(sig, handler)
        self._ray = True
        log.info("Ray: %s", ray.cluster_resources())

    async def close(self) -> None:
        """End every instance (and the local Ray runtime this started)."""
        for handle in self.handles.values():
            try:
                await asyncio.wait_for(handle.call("close"), 10)
            except Exception:  # already gone
                pass
        if self._ray:
            import ray

            for handle in self.handles.values():
                try:
                    ray.kill(handle.actor, no_restart=True)
                except Exception:
                    pass
            ray.shutdown()
            self._ray = False
