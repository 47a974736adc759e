"""The settings policy a simulated pd request asks: ``policy(prompt_tokens, max_tokens, device_profile,
cloud_estimate) -> SessionSettings``. The default is the session's own decision v1
(``pdlink.edge.session_settings.decide_settings``); any callable of that shape replaces it (e.g. v2)."""

from __future__ import annotations

from typing import Callable

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.session_settings import CloudEstimate, SessionSettings, decide_settings

SettingsPolicy = Callable[[int, int, DeviceProfile, CloudEstimate], SessionSettings]


def default_policy(max_gap_s: float = 0.05, chunk_size: int = 512) -> SettingsPolicy:
    """Decision v1 with the run's gap bound and chunk size (what ``Session`` passes it)."""

    def policy(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate) -> SessionSettings:
        return decide_settings(prompt_tokens, max_tokens, device, cloud, max_gap_s=max_gap_s, chunk_size=chunk_size)

    return policy


def mode_settings(mode: str, prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate,
                  policy: SettingsPolicy, chunk_size: int = 512) -> SessionSettings:
    """The settings of one request in ``mode``, as ``Session._settings`` makes them (the policy only for pd)."""
    if mode == "device":
        return SessionSettings(False, 0, 0.0, chunk_size, reason="device mode")
    if mode == "cloud":
        return SessionSettings(True, max_tokens, 0.0, chunk_size, reason="cloud mode")
    return policy(prompt_tokens, max_tokens, device, cloud)
