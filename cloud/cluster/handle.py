"""One way for the gateway to call an instance, wherever it runs: in this process, or as a Ray actor.

``await handle.call("offer", job)`` runs the instance's async method; an instance that is gone (its actor
died, or it was closed) raises :class:`InstanceDied`, which the gateway answers by re-placing its requests.
"""

from __future__ import annotations

import asyncio
from typing import Any


class InstanceDied(RuntimeError):
    """The instance is gone; its requests must go elsewhere."""


class LocalHandle:
    """An instance object in this process (tests; ``--cluster inproc``). ``kill()`` makes it die as an actor
    would: every call in flight and every later call raises :class:`InstanceDied`."""

    def __init__(self, name: str, instance: Any):
        self.name, self.instance, self.dead = name, instance, False
        self._calls: set[asyncio.Task] = set()

    async def call(self, method: str, *args: Any) -> Any:
        if self.dead:
            raise InstanceDied(f"instance {self.name} is gone")
        task = asyncio.ensure_future(getattr(self.instance, method)(*args))
        self._calls.add(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if self.dead:
                raise InstanceDied(f"instance {self.name} is gone") from None
            task.cancel()
            raise
        finally:
            self._calls.discard(task)

    async def kill(self) -> None:
        self.dead = True
        waiting = [t for t in self._calls if not t.done()]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        self._closing = asyncio.ensure_future(self.instance.close())  # its thread stops after its current step


class RayHandle:
    """A Ray actor of an instance class."""

    def __init__(self, name: str, actor: Any):
        self.name, self.actor = name, actor

    async def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import RayActorError

        try:
            return await getattr(self.actor, method).remote(*args)
        except RayActorError as exc:
            raise InstanceDied(f"instance {self.name} is gone: {exc}") from exc

    async def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=True)
