"""The exhaustive check of settings v2: a grid search over the same timeline model (``settings_model``).

Every combination of use-cloud on/off, chunk in ``CHUNK_CHOICES``, keep ratio rho on a grid (when refinement is
allowed), pace on a fine grid inside ``[device TPOT, gap bound]`` and k in ``1..k_max`` is judged by the model;
the cheapest feasible one (cloud busy seconds; TTFT within the same target as v2, shown gap within the bound)
wins. The scan over k stops early only where the model makes later k equal or dearer: once the hand-over
happens before the cap (every larger k gives the same timeline), and once every pace has a feasible k (the cloud
makes ``min(k, ...)`` tokens, so its seconds never fall as k grows). The trajectory of a k is computed once and
judged at every pace (the hand-over does not depend on the pace). For tests and ``bench/settings.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.session_settings import REFINE_MODES, CloudEstimate
from pdlink.edge.settings_model import (
    CHUNK_CHOICES, Prediction, device_only_ttft_s, gap_bound_s, judge, trajectory, ttft_target_s,
)


@dataclass(frozen=True)
class GridChoice:
    """The grid's optimum: its settings and their prediction; ``evaluated``: judged combinations."""

    use_cloud: bool
    k: int
    pace_s: float
    keep_ratio: float  # 1.0: no refinement
    chunk_size: int
    prediction: Prediction
    evaluated: int


def grid_search(prompt_tokens: int, max_tokens: int, device: DeviceProfile, cloud: CloudEstimate, *,
                max_gap_s: float = 0.05, ttft_slo_s: float | None = None, refine: str = "off",
                keep_ratio: float = 0.5, chunks: tuple[int, ...] = CHUNK_CHOICES, max_k: int = 512,
                paces: int = 12, rhos: int = 6) -> GridChoice:
    """The cheapest feasible settings on the grid (module docstring); ``paces``/``rhos``: grid points."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    L = prompt_tokens
    bound = gap_bound_s(device, L, max_gap_s)
    tau_d = min(device.decode_time_s(L), bound)
    target = ttft_target_s(L, device, cloud, max(chunks), ttft_slo_s)
    pace_grid = sorted({tau_d + (bound - tau_d) * i / (paces - 1) for i in range(paces)} if paces > 1 else {bound})
    rho_grid = {"off": [1.0], "on": [keep_ratio],
                "auto": sorted({keep_ratio + (1 - keep_ratio) * i / (rhos - 1) for i in range(rhos)})}[refine]
    evaluated = 0
    best: GridChoice | None = None
    for chunk in chunks:  # the cloud not used
        evaluated += 1
        pred = judge(trajectory(L, max_tokens, 0, 1.0, chunk, device, cloud), bound, cloud.tpot_s, bound, target)
        if pred.feasible:
            return GridChoice(False, 0, bound, 1.0, chunk, pred, evaluated)
    k_max = max(1, min(max_tokens, max_k))
    fallback: GridChoice | None = None
    for rho in rho_grid:
        for chunk in chunks:
            open_paces = list(pace_grid)
            for k in range(1, k_max + 1):
                traj = trajectory(L, max_tokens, k, rho, chunk, device, cloud)
                for pace in list(open_paces):
                    evaluated += 1
                    pred = judge(traj, pace, cloud.tpot_s, bound, target)
                    if not pred.feasible:
                        continue
                    open_paces.remove(pace)
                    if best is None or pred.cloud_busy_s < best.prediction.cloud_busy_s - 1e-9:
                        best = GridChoice(True, k, pace, rho, chunk, pred, 0)
                if not open_paces or traj.handover_j < min(k, max_tokens) or traj.catch_up_s is None:
                    break
            if fallback is None:
                fallback = GridChoice(True, k_max, pace_grid[-1], rho, chunk,
                                      judge(trajectory(L, max_tokens, k_max, rho, chunk, device, cloud),
                                            pace_grid[-1], cloud.tpot_s, bound, target), 0)
    chosen = best or fallback
    return GridChoice(chosen.use_cloud, chosen.k, chosen.pace_s, chosen.keep_ratio, chosen.chunk_size,
                      chosen.prediction, evaluated)


def device_only_seconds(prompt_tokens: int, device: DeviceProfile, chunks: tuple[int, ...] = CHUNK_CHOICES) -> float:
    """The device's own TTFT with its best chunk (for reports)."""
    return min(device_only_ttft_s(prompt_tokens, device, c) for c in chunks)
