"""Settings decision v1: per request, how many tokens the cloud makes (k) and how fast they are shown.

Inputs: prompt length ``L``, the device profile (prefill time ``P(n, c)``, decode time ``tau_d``), and the
cloud's expected TTFT (RTT + queue + its prefill). The device shows the first cloud token at ``TTFT``
and then one token per ``tau`` while its own prefill runs; it catches up at
``Tc(j) = P(L, 0) + P(j, L)`` (prompt, then the j received tokens as one chunk). The shown buffer
must last until the device's first own token, ``TTFT + j * tau >= Tc(j) + tau_d``, so

    j >= (P(L, 0) + tau_d - TTFT) / (tau - p)        with p = P(1, L), the prefill cost of one token,

and ``k = j`` plus a margin (the cloud is stopped at the hand-over anyway). ``tau`` is the device's
own decode time (the stream keeps one pace through the hand-over), capped at ``max_gap_s``. If
``tau <= p`` the device can never catch up while tokens arrive, so the cloud makes the whole answer.
When the cloud would answer later than the device's own prefill, the cloud is not used at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdlink.edge.device_profile import DeviceProfile


PACE_HEADROOM = 0.95  # show buffered tokens a little inside the gap bound: timers fire late by a ms or two


@dataclass(frozen=True)
class CloudEstimate:
    """What the device expects of the cloud for one request."""

    rtt_s: float = 0.05
    queue_s: float = 0.0
    prefill_tok_s: float = 2000.0  # a datacenter accelerator; refined by what the cloud reports
    connect_s: float = 0.0  # still to pay before the request can leave (0 on an open connection)

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.connect_s + self.rtt_s + self.queue_s + prompt_tokens / self.prefill_tok_s


@dataclass(frozen=True)
class SessionSettings:
    """Per-request settings of a P/D session."""

    use_cloud: bool
    k: int  # tokens the cloud generates at most
    pace_s: float  # the speed controller's tau
    chunk_size: int  # local prefill chunk
    reason: str = ""  # why these settings
    predicted: dict | None = None  # device_ttft_s, cloud_ttft_s, catch_up_s

    def __post_init__(self):
        if self.k < 0 or self.pace_s < 0 or self.chunk_size < 1:
            raise ValueError("k and pace_s must be >= 0 and chunk_size >= 1")


def decide_settings(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate, *,
                    max_gap_s: float = 0.05, chunk_size: int = 512, max_k: int = 512,
                    margin: float = 0.15) -> SessionSettings:
    """Choose k and the pace for one request (see the module docstring)."""
    L = prompt_tokens
    device_ttft = device.prefill_time_s(L, 0)
    cloud_ttft = cloud.ttft_s(L)
    tau_d = device.decode_time_s(L)
    pace = min(max_gap_s * PACE_HEADROOM, tau_d)
    predicted = {"device_ttft_s": device_ttft, "cloud_ttft_s": cloud_ttft, "device_decode_s": tau_d}
    if cloud_ttft >= device_ttft:
        return SessionSettings(False, 0, pace, chunk_size, reason="cloud_slow: its first token would come later "
                               "than the device's own", predicted=predicted)
    j, why = cloud_tokens_needed(L, device, cloud_ttft, pace, max_tokens)
    k = min(max_tokens, max_k, with_margin(j, margin))
    predicted["catch_up_s"] = device_ttft + device.prefill_time_s(min(j, k), L)
    return SessionSettings(True, k, pace, chunk_size, reason=f"{why}: j={j}", predicted=predicted)


def cloud_tokens_needed(prompt_tokens: int, device: DeviceProfile, cloud_ttft_s: float, pace_s: float,
                        max_tokens: int) -> tuple[int, str]:
    """The j of the closed form (module docstring) and how it was found."""
    L = prompt_tokens
    per_token = device.prefill_time_s(1, L)
    if pace_s <= per_token:
        return max_tokens, "the device prefills slower than the shown pace: the cloud makes the answer"
    prompt_s, tau_d = device.prefill_time_s(L, 0), device.decode_time_s(L)
    j = max(1, math.ceil((prompt_s + tau_d - cloud_ttft_s) / (pace_s - per_token)))
    # P(j, L) grows a little faster than j * P(1, L) (attention over the received tokens too): step up to it.
    for _ in range(200):
        if j >= max_tokens or cloud_ttft_s + j * pace_s >= prompt_s + device.prefill_time_s(j, L) + tau_d:
            break
        j += max(1, j // 50)
    return min(j, max_tokens), "closed form"


def with_margin(j: int, margin: float = 0.15) -> int:
    """k for a needed j: the cloud is stopped at the hand-over anyway, so err on the side of more."""
    return max(1, math.ceil(j * (1 + margin)) + 2)


def retuned_pace(settings: SessionSettings, first_token_s: float, buffered_target: int, max_gap_s: float) -> float:
    """The pace once the real TTFT is known: spread the cloud's tokens over the wait for the device,
    never faster than the device will continue and never slower than ``max_gap_s``."""
    catch_up = (settings.predicted or {}).get("catch_up_s")
    tau_d = (settings.predicted or {}).get("device_decode_s", settings.pace_s)
    if catch_up is None or buffered_target < 1:
        return settings.pace_s
    spread = (catch_up + tau_d - first_token_s) / buffered_target
    cap = max_gap_s * PACE_HEADROOM
    return min(cap, max(min(tau_d, cap), spread))
