"""Settings decision v2 (the default): per request, the settings that use the fewest cloud busy seconds.

Chosen: whether to use the cloud, k (cloud tokens at most), the pace tau, the refinement keep ratio rho (1 = no
refinement; only when refinement is allowed) and the local prefill chunk. Minimised: the cloud's busy seconds
as the timeline model counts them (``pdlink.edge.settings_model``: its prefill of the prompt plus its decode
of the tokens it makes before it hears the stop). Subject to:

- **TTFT.** Without an SLO the target is what the cloud can give: the point of pd mode is the first token at
  cloud speed, so the cloud is used whenever its first token comes sooner than the device's own. With an SLO
  that the device alone meets, the cloud is not used at all (0 cloud seconds). With an SLO that even the cloud
  misses, the cloud is used anyway (the best TTFT there is) and ``reason`` says so. A cloud no sooner than
  the device is never used.
- **Gap.** The stream keeps one pace through the hand-over, and after it the gap is the device's own decode
  time, so the gap bound is ``max(PACE_HEADROOM * max_gap_s, device TPOT)`` and the pace never runs faster
  than the device will continue (``tau >= device TPOT``).

The decision, analytic plus a small search (well under a millisecond):

1. **Pace = the bound.** The hand-over time does not depend on the pace (the device catches up with what has
   *arrived*); a slower pace only makes the shown buffer last longer, so the largest allowed pace needs the
   fewest cloud tokens.
2. **k = the least feasible k.** Cloud seconds never fall as k grows (the cloud makes ``min(k, ...)`` tokens)
   and the gap at the hand-over shrinks as k grows, so the answer is the smallest k whose hand-over gap fits.
   A closed form gives the first guess -- the device's prompt is done at ``Tp`` and each received token costs
   it ``c``, so ``Tp + k c <= T + (k - 1) tau + bound`` gives ``k >= (Tp - T - bound + tau) / (tau - c)`` --
   then the model is checked there and the search gallops and bisects to the least feasible k.
3. **rho and chunk.** Without refinement the chunk only changes the per-chunk overhead, so the largest chunk
   is best; with refinement (``auto``: rho in {1, keep ratio}; ``on``: the keep ratio) every chunk is tried,
   since a smaller chunk leaves fewer unrefined positions in flight when the kept positions arrive.

``pdlink.edge.settings_grid.grid_search`` checks this against an exhaustive search over the same model.
"""

from __future__ import annotations

import math

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.fallback import Fallback
from pdlink.edge.session_settings import REFINE_MODES, CloudEstimate, SessionSettings
from pdlink.edge.settings_model import (
    CHUNK_CHOICES, Prediction, refined_from, device_only_ttft_s, gap_bound_s, judge, trajectory,
)

NOT_NEEDED = Fallback.CLOUD_NOT_NEEDED.value  # the device alone meets the TTFT SLO (``fallback`` shows it)


def decide_settings_v2(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate, *,
                       max_gap_s: float = 0.05, ttft_slo_s: float | None = None, refine: str = "off",
                       keep_ratio: float = 0.5, chunks: tuple[int, ...] = CHUNK_CHOICES,
                       max_k: int = 512) -> SessionSettings:
    """The v2 settings of one request (module docstring). ``chunks``: the prefill chunks the device may use
    (the largest is its device-only chunk); ``max_k``: the cloud's limit on k. Raises ValueError for a bad
    ``refine``, ``keep_ratio`` or ``chunks``."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    if not 0.0 < keep_ratio <= 1.0 or not chunks or min(chunks) < 1:
        raise ValueError("keep_ratio must be in (0, 1] and chunks non-empty positive sizes")
    L, big = prompt_tokens, max(chunks)
    bound = gap_bound_s(device, L, max_gap_s)
    device_ttft, cloud_ttft = device_only_ttft_s(L, device, big), cloud.ttft_s(L)
    predicted = {"device_ttft_s": device_ttft, "cloud_ttft_s": cloud_ttft,
                 "device_decode_s": device.decode_time_s(L), "gap_bound_s": bound}
    alone = dict(use_cloud=False, k=0, pace_s=bound, chunk_size=big, version=2, gap_bound_s=bound,
                 predicted={**predicted, "cloud_busy_s": 0.0, "ttft_s": device_ttft})
    if cloud_ttft >= device_ttft:
        return SessionSettings(**alone, reason=Fallback.CLOUD_SLOW.because(
            "its first token would come later than the device's own"))
    if ttft_slo_s is not None and device_ttft <= ttft_slo_s:
        return SessionSettings(**alone, reason=f"{NOT_NEEDED}: the device's own first token at {device_ttft:.2f} s "
                                               f"meets the TTFT SLO of {ttft_slo_s:.2f} s")
    rhos = {"off": (1.0,), "on": (keep_ratio,), "auto": (1.0, keep_ratio)}[refine]
    best: tuple[int, Prediction, float, int] | None = None
    fallback_k: tuple[int, Prediction, float, int] | None = None
    k_max = max(1, min(max_tokens, max_k))
    for rho in dict.fromkeys(rhos):
        for chunk in (sorted(chunks, reverse=True) if rho < 1 else (big,)):
            trial = SessionSettings(True, 1, bound, chunk, refine_keep_ratio=rho if rho < 1 else 0.0)
            k, pred = minimal_k(L, max_tokens, trial, device, cloud, max_gap_s=max_gap_s, k_max=k_max)
            if k is None:
                fallback_k = fallback_k or (k_max, pred, rho, chunk)
            elif best is None or pred.cloud_busy_s < best[1].cloud_busy_s - 1e-9:
                best = (k, pred, rho, chunk)
    k, pred, rho, chunk = best or fallback_k
    why = (f"v2: k={k}, the fewest cloud tokens that keep the shown gap within {bound * 1000:.0f} ms "
           f"(hand-over after {pred.handover_j})" if best else
           f"v2: no k up to {k_max} keeps the gap within {bound * 1000:.0f} ms: k={k_max}")
    if ttft_slo_s is not None and cloud_ttft > ttft_slo_s:
        why += (f"; the TTFT SLO of {ttft_slo_s:.2f} s is missed even by the cloud ({cloud_ttft:.2f} s): "
                "the cloud is used for the best TTFT there is")
    predicted.update(pred.to_json())
    if rho < 1:
        predicted["refined_prompt_tokens"] = pred.device_prompt_tokens
    return SessionSettings(True, k, bound, chunk, reason=why, predicted=predicted,
                           refine_keep_ratio=rho if rho < 1 else 0.0, version=2, gap_bound_s=bound)


def minimal_k(prompt_tokens: int, max_tokens: int, settings: SessionSettings, device: DeviceProfile,
              cloud: CloudEstimate, *, max_gap_s: float = 0.05, k_max: int | None = None,
              ) -> tuple[int | None, Prediction]:
    """The least k in ``1..k_max`` whose hand-over keeps the shown gap within the bound, with ``settings``'
    pace, chunk and keep ratio, and its prediction; ``(None, prediction at k_max)`` when none does."""
    L, chunk, rho = prompt_tokens, settings.chunk_size, settings.refine_keep_ratio
    k_hi = max(1, min(max_tokens, k_max if k_max is not None else max_tokens))
    bound = gap_bound_s(device, L, max_gap_s)
    cache: dict[int, Prediction] = {}

    def at(k: int) -> Prediction:
        if k not in cache:
            traj = trajectory(L, max_tokens, k, rho, chunk, device, cloud)
            cache[k] = judge(traj, settings.pace_s, cloud.tpot_s, bound)
        return cache[k]

    guess = min(k_hi, max(1, _closed_form_k(L, settings, device, cloud, bound)))
    if at(guess).feasible:
        lo, hi, step = 0, guess, 1
        while hi - step >= 1 and at(hi - step).feasible:
            hi, step = hi - step, step * 2
        lo = max(0, hi - step)
    else:
        lo, step = guess, 1
        while True:
            cand = min(k_hi, lo + step)
            if at(cand).feasible:
                hi = cand
                break
            if cand == k_hi:
                return None, at(k_hi)
            lo, step = cand, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid).feasible:
            hi = mid
        else:
            lo = mid
    return hi, at(hi)


def _closed_form_k(L: int, settings: SessionSettings, device: DeviceProfile, cloud: CloudEstimate,
                   bound: float) -> int:
    """The first guess: ``Tp + k c <= T + (k - 1) tau + bound`` (module docstring, step 2)."""
    T, chunk, rho = cloud.ttft_s(L), settings.chunk_size, settings.refine_keep_ratio
    device_prompt = L
    if 0 < rho < 1:
        kept_from = refined_from(L, device, chunk, T)
        device_prompt = kept_from + math.ceil(rho * (L - kept_from)) if kept_from < L else L
    prompt_s = device.chunked_prefill_time_s(device_prompt, chunk)
    per_token = (device.prefill_time_s(chunk, device_prompt) - device.chunk_overhead_s) / chunk
    step = max(settings.pace_s, cloud.tpot_s)
    if step <= per_token:
        return 1 << 30
    return math.ceil((prompt_s - T - bound + step) / (step - per_token))
