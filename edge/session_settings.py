"""Per-request settings (``SessionSettings``), the cloud's expected costs (``CloudEstimate``), the decisions a
pd request makes once under way (``CloudPlan``), and settings decision v1 (``decide_settings``; v2, the default,
is ``pdlink.edge.settings_v2``).

Settings decision v1: per request, how many tokens the cloud makes (k) and how fast they are shown.

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

With prompt refinement the device switches to the cloud's kept tokens when the first cloud token
arrives: it has prefilled ``n0 ~ TTFT * prefill rate`` tokens by then and reads ``rho`` of the rest, so
``L`` above becomes ``n0 + rho * (L - n0)``. ``refine="auto"`` uses it only when that cuts the cloud
tokens needed (j) by a quarter or more: refinement trades answer fidelity for an earlier hand-over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.fallback import Fallback
from pdlink.edge.pace_planner import PacePlanner
from pdlink.edge.settings_model import PACE_HEADROOM, predict

REFINE_MODES = ("off", "auto", "on")
AUTO_REFINE_GAIN = 0.75  # "auto" refines when j shrinks to this fraction or less


@dataclass(frozen=True)
class CloudEstimate:
    """What the device expects of the cloud for one request."""

    rtt_s: float = 0.05
    queue_s: float = 0.0
    prefill_tok_s: float = 2000.0  # a datacenter accelerator; refined by what the cloud reports
    connect_s: float = 0.0  # still to pay before the request can leave (0 on an open connection)
    tpot_s: float = 0.02  # the cloud's decode time per token (its busy seconds per token it makes)

    def __post_init__(self):
        if self.rtt_s < 0 or self.prefill_tok_s <= 0 or self.connect_s < 0 or self.tpot_s < 0:
            raise ValueError("CloudEstimate: rtt_s, connect_s and tpot_s must be >= 0 and prefill_tok_s > 0")

    def ttft_s(self, prompt_tokens: int) -> float:
        return self.connect_s + self.rtt_s + self.queue_s + prompt_tokens / self.prefill_tok_s

    def with_ttft(self, prompt_tokens: int, ttft_s: float) -> "CloudEstimate":
        """The same cloud, with its first token at ``ttft_s`` for this prompt (a real estimate): the difference
        goes to the queue."""
        return replace(self, connect_s=0.0, queue_s=ttft_s - self.rtt_s - prompt_tokens / self.prefill_tok_s)


@dataclass(frozen=True)
class SessionSettings:
    """Per-request settings of a P/D session."""

    use_cloud: bool
    k: int  # tokens the cloud generates at most
    pace_s: float  # the speed controller's tau
    chunk_size: int  # local prefill chunk
    reason: str = ""  # why these settings
    predicted: dict | None = None  # device_ttft_s, cloud_ttft_s, catch_up_s, cloud_busy_s (the model's)
    refine_keep_ratio: float = 0.0  # ask the cloud for a refined prompt keeping this share (0: full prompt)
    version: int = 1  # the decision that chose them (1: closed form, 2: pdlink.edge.settings_v2)
    gap_bound_s: float | None = None  # v2: the largest pace allowed, max(headroom * max_gap, device TPOT)

    def __post_init__(self):
        if self.k < 0 or self.pace_s < 0 or self.chunk_size < 1:
            raise ValueError("k and pace_s must be >= 0 and chunk_size >= 1")
        if not 0.0 <= self.refine_keep_ratio <= 1.0:
            raise ValueError("refine_keep_ratio must be in [0, 1] (0: no refinement)")


def decide_settings(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate, *,
                    max_gap_s: float = 0.05, chunk_size: int = 512, max_k: int = 512,
                    margin: float = 0.15, refine: str = "off", keep_ratio: float = 0.5) -> SessionSettings:
    """Choose k, the pace and whether to refine the prompt for one request (see the module docstring)."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    L = prompt_tokens
    device_ttft = device.prefill_time_s(L, 0)
    cloud_ttft = cloud.ttft_s(L)
    tau_d = device.decode_time_s(L)
    pace = min(max_gap_s * PACE_HEADROOM, tau_d)
    predicted = {"device_ttft_s": device_ttft, "cloud_ttft_s": cloud_ttft, "device_decode_s": tau_d}
    if cloud_ttft >= device_ttft:
        return SessionSettings(False, 0, pace, chunk_size, reason=Fallback.CLOUD_SLOW.because(
                               "its first token would come later than the device's own"),
                               predicted={**predicted, "cloud_busy_s": 0.0})
    j, why = cloud_tokens_needed(L, device, cloud_ttft, pace, max_tokens)
    device_prompt, rho = L, 0.0
    if refine != "off":
        refined = refined_prompt_tokens(L, device, cloud_ttft, keep_ratio)
        j_refined, why_refined = cloud_tokens_needed(L, device, cloud_ttft, pace, max_tokens, refined)
        if refine == "on" or j_refined <= AUTO_REFINE_GAIN * j:
            j, why, device_prompt, rho = j_refined, f"{why_refined}, refined prompt", refined, keep_ratio
        predicted["refined_prompt_tokens"] = refined
    k = min(max_tokens, max_k, with_margin(j, margin))
    predicted["catch_up_s"] = device.prefill_time_s(device_prompt, 0) + device.prefill_time_s(min(j, k), device_prompt)
    settings = SessionSettings(True, k, pace, chunk_size, reason=f"{why}: j={j}", predicted=predicted,
                               refine_keep_ratio=rho)
    predicted["cloud_busy_s"] = predict(L, max_tokens, settings, device, cloud, max_gap_s=max_gap_s).cloud_busy_s
    return settings


def refined_prompt_tokens(prompt_tokens: int, device: DeviceProfile, cloud_ttft_s: float, keep_ratio: float) -> int:
    """Prompt tokens the device computes when it switches to the refined prompt at the first cloud token."""
    done = min(prompt_tokens, int(cloud_ttft_s * device.prefill_tok_s))
    return done + math.ceil(keep_ratio * (prompt_tokens - done))


def cloud_tokens_needed(prompt_tokens: int, device: DeviceProfile, cloud_ttft_s: float, pace_s: float,
                        max_tokens: int, device_prompt_tokens: int | None = None) -> tuple[int, str]:
    """The j of the closed form (module docstring) and how it was found; ``device_prompt_tokens``: what
    the device prefills of the prompt (fewer with refinement; default all of it)."""
    L = prompt_tokens if device_prompt_tokens is None else device_prompt_tokens
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


@dataclass(frozen=True)
class CloudPlan:
    """The decisions a pd request still makes once under way, from its settings (pure; the core asks).

    ``downlink_s``: one-way delay of the link, so an estimate made by the cloud is placed on the device's
    clock. ``caller_set``: the caller fixed k, so the estimate never tightens it. ``cloud``: the estimate the
    settings were decided with (v2 re-runs its k search with the real TTFT; v1 does not need it)."""

    settings: SessionSettings
    device: DeviceProfile
    prompt_tokens: int
    max_tokens: int
    max_gap_s: float
    downlink_s: float = 0.0
    caller_set: bool = False
    cloud: CloudEstimate | None = None

    def first_token_pace(self, first_token_s: float, k: int) -> float:
        """The pace once the first cloud token is here. v1: ``retuned_pace``. v2: its pace is already the
        largest allowed (a slower pace needs fewer cloud tokens), so it stays, kept inside
        ``[device TPOT, gap bound]``."""
        if self.settings.version != 2:
            return retuned_pace(self.settings, first_token_s, k, self.max_gap_s)
        tau_d = self.device.decode_time_s(self.prompt_tokens)
        bound = self.settings.gap_bound_s or max(tau_d, self.max_gap_s * PACE_HEADROOM)
        return min(bound, max(tau_d, self.settings.pace_s))

    def pace_planner(self) -> PacePlanner:
        """The real-timeline pacer of this request, primed with the profile's and the estimate's figures."""
        d, L, chunk = self.device, self.prompt_tokens, self.settings.chunk_size
        bound = self.settings.gap_bound_s or max(d.decode_time_s(L), self.max_gap_s * PACE_HEADROOM)
        token_s = max(0.0, d.prefill_time_s(chunk, L // 2) - d.chunk_overhead_s) / chunk
        return PacePlanner(bound_s=bound, device_tpot_s=d.decode_time_s(L), token_s=token_s,
                           cloud_tpot_s=(self.cloud or CloudEstimate()).tpot_s, step_overhead_s=d.chunk_overhead_s)

    def after_estimate(self, now_s: float, estimated_ttft_s: float, k: int) -> tuple[str | None, int]:
        """The cloud's own TTFT estimate arrived: ``(reason, k)`` with a reason to give the cloud up when its
        first token would come after the device's own, else ``(None, k')`` with k tightened to what the
        decision needs with the real TTFT (never raised; v1: its closed form, v2: its k search)."""
        predicted = self.settings.predicted or {}
        if "device_ttft_s" not in predicted:
            return None, k
        cloud_ttft = now_s + estimated_ttft_s + self.downlink_s
        if cloud_ttft > predicted["device_ttft_s"]:
            return Fallback.CLOUD_SLOW.because(f"estimated first token at {cloud_ttft:.2f} s, the device's at "
                                               f"{predicted['device_ttft_s']:.2f} s"), k
        if self.caller_set:
            return None, k
        if self.settings.version == 2:
            from pdlink.edge.settings_v2 import minimal_k

            cloud = (self.cloud or CloudEstimate()).with_ttft(self.prompt_tokens, cloud_ttft)
            k_real, _ = minimal_k(self.prompt_tokens, self.max_tokens, self.settings, self.device, cloud,
                                  max_gap_s=self.max_gap_s, k_max=k)
            return None, min(k, k_real if k_real is not None else k)
        refined = predicted.get("refined_prompt_tokens") if self.settings.refine_keep_ratio else None
        j, _ = cloud_tokens_needed(self.prompt_tokens, self.device, cloud_ttft, self.settings.pace_s,
                                   self.max_tokens, refined)
        return None, k if self.caller_set else min(k, with_margin(j))
