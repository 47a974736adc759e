"""What the P/D session needs of a device: the engine interface, and the steps it times (``Protocol``s).

``DeviceEngine`` is the part of :class:`pdlink.edge.engine.Engine` a session calls: sequences, one prefill
chunk or decode step at a time, and the package's tokenizer, model config and manifest. Anything with
these members serves (the assistant's ``BatchingEngine``, a test's fake engine). ``StepDevice`` is what
runs the session's steps: ``LocalDevice`` runs them on the engine at this machine's speed,
``pdlink.edge.emulation.EmulatedDevice`` at a device profile's; both count the request's steps and say
what they emulated, so the session never asks which one it has.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceEngine(Protocol):
    """The engine calls and attributes a session uses (see the module docstring)."""

    tokenizer: Any
    model_config: Any
    context_window: int
    num_threads: int
    manifest: Any

    def add_sequence(self) -> int: ...

    def remove_sequence(self, seq_id: int) -> None: ...

    def rollback(self, seq_id: int, num_tokens: int) -> None: ...

    def num_computed_tokens(self, seq_id: int) -> int: ...

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray: ...

    def decode(self, seq_id: int, token_id: int) -> np.ndarray: ...

    def decode_greedy(self, seq_id: int, token_id: int) -> int: ...


class StepDevice(Protocol):
    """Runs a request's steps on an engine and accounts for them."""

    waited_s: float  # of the request's step time, how much was an emulated wait (0 on this machine's speed)

    def reset_stats(self) -> None: ...

    def interrupt(self) -> None: ...

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray: ...

    def decode(self, seq_id: int, token_id: int) -> np.ndarray: ...

    def decode_greedy(self, seq_id: int, token_id: int) -> int: ...

    def label(self) -> dict: ...


class LocalDevice:
    """The engine's steps at this machine's own speed (nothing emulated)."""

    def __init__(self, engine: DeviceEngine):
        self.engine = engine
        self.waited_s = 0.0

    def reset_stats(self) -> None:
        """Nothing is counted at this machine's speed."""

    def interrupt(self) -> None:
        """No emulated wait to cut short."""

    def prefill(self, seq_id: int, token_ids: list[int]) -> np.ndarray:
        return self.engine.prefill(seq_id, token_ids)

    def decode(self, seq_id: int, token_id: int) -> np.ndarray:
        return self.engine.decode(seq_id, token_id)

    def decode_greedy(self, seq_id: int, token_id: int) -> int:
        return self.engine.decode_greedy(seq_id, token_id)

    def label(self) -> dict:
        return {"device_profile": None, "emulated": False}
