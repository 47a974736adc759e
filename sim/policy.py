"""The settings policy a simulated pd request asks: ``policy(prompt_tokens, max_tokens, device_profile,
cloud_estimate) -> SessionSettings``. The default is what a ``Session`` decides with its defaults: settings v2
(``pdlink.edge.settings_v2.decide_settings_v2``: the fewest cloud seconds, with the run's TTFT SLO -- a request
the device alone answers within the SLO does not use the cloud); ``version=1`` gives decision v1
(``pdlink.edge.session_settings.decide_settings``). Any callable of that shape replaces it."""

from __future__ import annotations

from typing import Callable

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.session_settings import CloudEstimate, SessionSettings, decide_settings
from pdlink.edge.settings_model import CHUNK_CHOICES
from pdlink.edge.settings_v2 import decide_settings_v2

SettingsPolicy = Callable[[int, int, DeviceProfile, CloudEstimate], SessionSettings]
SETTINGS_VERSIONS = (1, 2)


def default_policy(max_gap_s: float = 0.05, chunk_size: int = 512, *, ttft_slo_s: float | None = None,
                   version: int = 2) -> SettingsPolicy:
    """The session's decision with the run's gap bound, chunk size and TTFT SLO (what ``Session._settings``
    passes it: v2 may use any chunk of ``CHUNK_CHOICES`` up to ``chunk_size``). ValueError for another version."""
    if version not in SETTINGS_VERSIONS:
        raise ValueError(f"settings version must be one of {SETTINGS_VERSIONS}, got {version!r}")
    chunks = tuple(c for c in CHUNK_CHOICES if c <= chunk_size) or (chunk_size,)

    def v1(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate) -> SessionSettings:
        return decide_settings(prompt_tokens, max_tokens, device, cloud, max_gap_s=max_gap_s, chunk_size=chunk_size)

    def v2(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate) -> SessionSettings:
        return decide_settings_v2(prompt_tokens, max_tokens, device, cloud, max_gap_s=max_gap_s, ttft_slo_s=ttft_slo_s,
                                  chunks=chunks)

    return v2 if version == 2 else v1


def mode_settings(mode: str, prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate,
                  policy: SettingsPolicy, chunk_size: int = 512) -> SessionSettings:
    """The settings of one request in ``mode``, as ``Session._settings`` makes them (the policy only for pd)."""
    if mode == "device":
        return SessionSettings(False, 0, 0.0, chunk_size, reason="device mode")
    if mode == "cloud":
        return SessionSettings(True, max_tokens, 0.0, chunk_size, reason="cloud mode")
    return policy(prompt_tokens, max_tokens, device, cloud)
