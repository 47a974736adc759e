"""The timeline model of one pd request: what a choice of settings gives, in seconds (pure, no clock).

``predict(L, max_tokens, settings, device, cloud)`` follows the session's own behaviour
(``pdlink.edge.session_core``) step by step:

- t=0: the request leaves; the device prefills the prompt in chunks of ``chunk`` tokens, each chunk one
  ``device.prefill_time_s(n, context)`` (so a chunk pays ``chunk_overhead_s`` once).
- ``T = cloud.ttft_s(L)``: the first cloud token arrives and is shown at once; token ``i`` arrives at
  ``T + i * cloud.tpot_s`` (at most ``k``); the speed controller shows it at ``s_i = max(a_i, s_{i-1} + tau)``.
- With refinement (keep ratio ``rho < 1``) the kept positions come with the first token: the device keeps
  what it has computed or is computing (``n0`` tokens) and reads ``rho`` of the rest, so its prompt becomes
  ``n0 + ceil(rho * (L - n0))`` (too late once the prompt is in the KV cache).
- After its prompt the device prefills the received tokens (a chunk may hold the prompt's tail and received
  tokens, as in the core); when a step ends with its KV covering everything received (``j`` tokens) it takes
  over: its token ``j`` is ready then, it sends ``stop`` (one way: ``rtt/2``). If its prompt is done before
  any cloud token, it answers alone and cancels the cloud.
- Cloud busy seconds: its prefill of ``L`` tokens plus the decode steps of the tokens it makes before the
  stop reaches it (``j`` plus the ones in flight), at most ``k``.
- The shown gap is measured through the hand-over (the cloud's tokens and the device's first one); after it
  the gaps are the device's own decode time, which no setting changes. ``gap_bound_s`` is
  ``max(PACE_HEADROOM * max_gap_s, device TPOT)``: the stream keeps one pace, never faster than the device.

Settings v2 (``pdlink.edge.settings_v2``), its grid-search check (``pdlink.edge.settings_grid``) and the
trace simulator use this one model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pdlink.edge.device_profile import DeviceProfile

PACE_HEADROOM = 0.9  # show buffered tokens inside the gap bound: timers fire late by a few ms on a busy host
CHUNK_CHOICES = (64, 128, 256, 512, 1024)
_EPS = 1e-9


@dataclass(frozen=True)
class Prediction:
    """What the model predicts for one request under one choice of settings (seconds from submission).

    ``catch_up_s``: when the device's KV covers everything received and it takes over (None: no hand-over,
    the cloud made the whole answer or was not used); ``handover_j``: cloud tokens kept; ``cloud_tokens``:
    tokens the cloud made; ``feasible``: the gap through the hand-over is within ``gap_bound_s`` and, when a
    target was given, the TTFT is within it."""

    ttft_s: float
    catch_up_s: float | None
    handover_j: int
    cloud_busy_s: float
    max_gap_s: float
    feasible: bool
    cloud_ttft_s: float
    device_ttft_s: float
    device_prompt_tokens: int
    cloud_tokens: int
    gap_bound_s: float

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def gap_bound_s(device: DeviceProfile, prompt_tokens: int, max_gap_s: float) -> float:
    """The largest allowed pace (and gap): ``max(PACE_HEADROOM * max_gap_s, device TPOT at the prompt)``."""
    return max(PACE_HEADROOM * max_gap_s, device.decode_time_s(prompt_tokens))


def device_only_ttft_s(prompt_tokens: int, device: DeviceProfile, chunk: int) -> float:
    """The device's own first token: its whole prompt, in chunks."""
    return device.chunked_prefill_time_s(prompt_tokens, chunk)


def ttft_target_s(prompt_tokens: int, device: DeviceProfile, cloud, chunk: int,
                  ttft_slo_s: float | None = None) -> float:
    """The TTFT a decision must meet (see ``pdlink.edge.settings_v2``): the device's own when the cloud is not
    sooner; else the cloud's without an SLO; else the SLO, or the cloud's TTFT when even that misses it."""
    device_ttft, cloud_ttft = device_only_ttft_s(prompt_tokens, device, chunk), cloud.ttft_s(prompt_tokens)
    if cloud_ttft >= device_ttft:
        return device_ttft
    return cloud_ttft if ttft_slo_s is None else max(ttft_slo_s, cloud_ttft)


def refined_from(prompt_tokens: int, device: DeviceProfile, chunk: int, at_s: float) -> int:
    """Prompt positions computed or in flight at ``at_s`` (the device keeps them when the refined prompt comes)."""
    lo, hi = 0, math.ceil(prompt_tokens / chunk) - 1  # the last chunk index that has started by at_s
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if device.chunked_prefill_time_s(mid * chunk, chunk) <= at_s:  # when chunk `mid` starts
            lo = mid
        else:
            hi = mid - 1
    return min(prompt_tokens, (lo + 1) * chunk)


@dataclass(frozen=True)
class Trajectory:
    """The part of a prediction no pace changes: when the device takes over and what the cloud does (the
    hand-over depends on arrivals and on the device's steps, never on when tokens are shown)."""

    ttft_s: float
    catch_up_s: float | None
    handover_j: int
    cloud_tokens: int
    cloud_busy_s: float
    device_prompt_tokens: int
    cloud_ttft_s: float
    device_ttft_s: float


def trajectory(prompt_tokens: int, max_tokens: int, k: int, keep_ratio: float, chunk: int, device: DeviceProfile,
               cloud) -> Trajectory:
    """The device's steps and the cloud's tokens for ``k`` cloud tokens (0: device only) and keep ratio
    ``keep_ratio`` (1 or 0: no refinement); see the module docstring."""
    L = prompt_tokens
    device_ttft, cloud_ttft = device_only_ttft_s(L, device, chunk), cloud.ttft_s(L)
    if k < 1:
        return Trajectory(device_ttft, None, 0, 0, 0.0, L, cloud_ttft, device_ttft)
    T, tpot, cap = cloud_ttft, cloud.tpot_s, min(k, max_tokens)
    device_prompt = L
    if 0 < keep_ratio < 1:
        kept_from = refined_from(L, device, chunk, T)
        if kept_from < L:
            device_prompt = kept_from + math.ceil(keep_ratio * (L - kept_from))

    def arrived(t: float) -> int:
        if t < T - _EPS:
            return 0
        return cap if tpot <= 0 else min(cap, int((t - T) / tpot + _EPS) + 1)

    # Whole prompt chunks hold no answer tokens: their time is closed-form; the loop starts at the last one.
    computed = (device_prompt - 1) // chunk * chunk
    t = device.chunked_prefill_time_s(computed, chunk)
    while True:
        if arrived(t) >= max_tokens:  # the cloud made the whole answer
            return Trajectory(T, None, max_tokens, max_tokens, L / cloud.prefill_tok_s + (max_tokens - 1) * tpot,
                              device_prompt, cloud_ttft, device_ttft)
        n = min(chunk, device_prompt + arrived(t) - computed)
        t += device.prefill_time_s(n, computed)
        computed += n
        if computed >= device_prompt and computed >= device_prompt + arrived(t):
            break
    j = arrived(t)
    prefill_s = L / cloud.prefill_tok_s
    if j == 0:  # the device's prompt was done first: it answers alone and cancels the cloud
        started = T - cloud.rtt_s / 2 - prefill_s
        busy = min(prefill_s, max(0.0, t + cloud.rtt_s / 2 - started))
        return Trajectory(t, None, 0, 0, busy, device_prompt, cloud_ttft, device_ttft)
    if j >= max_tokens:
        return Trajectory(T, None, max_tokens, max_tokens, prefill_s + (max_tokens - 1) * tpot, device_prompt,
                          cloud_ttft, device_ttft)
    heard = t + cloud.rtt_s  # the stop reaches the cloud at t + rtt/2; its tokens take rtt/2 to arrive
    made = cap if tpot <= 0 else max(j, min(cap, int((heard - T) / tpot + _EPS) + 1))
    return Trajectory(T, t, j, made, prefill_s + (made - 1) * tpot, device_prompt, cloud_ttft, device_ttft)


def judge(traj: Trajectory, pace_s: float, tpot_s: float, bound_s: float,
          ttft_target: float | None = None) -> Prediction:
    """A trajectory shown at pace ``pace_s``: the largest gap through the hand-over and whether the bounds hold."""
    step = max(pace_s, tpot_s)
    j = traj.handover_j
    max_gap = step if j >= 2 else 0.0
    if traj.catch_up_s is not None and j >= 1:
        max_gap = max(max_gap, pace_s, traj.catch_up_s - (traj.ttft_s + (j - 1) * step))
    feasible = max_gap <= bound_s + 1e-6 and (ttft_target is None or traj.ttft_s <= ttft_target + 1e-9)
    return Prediction(traj.ttft_s, traj.catch_up_s, j, traj.cloud_busy_s, max_gap, feasible, traj.cloud_ttft_s,
                      traj.device_ttft_s, traj.device_prompt_tokens, traj.cloud_tokens, bound_s)


def predict(prompt_tokens: int, max_tokens: int, settings, device: DeviceProfile, cloud, *,
            max_gap_s: float = 0.05, ttft_target: float | None = None) -> Prediction:
    """The timeline of one request (module docstring). ``settings``: anything with ``use_cloud``, ``k``,
    ``pace_s``, ``chunk_size`` and ``refine_keep_ratio`` (0 or 1: no refinement), e.g. ``SessionSettings``;
    ``cloud``: a ``CloudEstimate`` (``ttft_s(L)``, ``rtt_s``, ``prefill_tok_s``, ``tpot_s``)."""
    k = settings.k if settings.use_cloud else 0
    traj = trajectory(prompt_tokens, max_tokens, k, settings.refine_keep_ratio, settings.chunk_size, device, cloud)
    return judge(traj, settings.pace_s, cloud.tpot_s, gap_bound_s(device, prompt_tokens, max_gap_s), ttft_target)
