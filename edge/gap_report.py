"""Did the shown stream keep its gap bound, and if not, why: read off one request's timeline (pure)."""

from __future__ import annotations

from pdlink.edge.timeline import Timeline

_SLACK_S = 0.002  # timer jitter that does not count as a miss


def gap_miss(timeline: Timeline, bound_s: float, handover_index: int | None, fallback: str | None,
             arrival_slack_s: float = 0.005) -> tuple[float, str | None]:
    """``(missed_by_s, cause)``: how far the largest shown gap went past ``bound_s`` (0.0 when within it) and
    the cause of that gap (None when within): ``cloud_slow`` (the buffer was empty and cloud tokens came
    slower than the bound), ``handover_late`` (the device's first own token came after the buffer ran dry),
    ``device_slow`` (a device step after the hand-over took longer than the bound: a host slower than the
    profile), ``fallback`` (the cloud failed and the device had to finish its prompt), ``display_late`` (the
    token was there but the display loop ran late: a busy host)."""
    shown = timeline.shown
    if len(shown) < 2:
        return 0.0, None
    k = max(range(1, len(shown)), key=lambda i: shown[i][0] - shown[i - 1][0])
    gap = shown[k][0] - shown[k - 1][0]
    if gap <= bound_s + _SLACK_S:
        return 0.0, None
    time_s, index, origin = shown[k]
    arrivals = {i: t for t, i in timeline.cloud_tokens}
    if origin == "cloud":
        waited_for_it = index in arrivals and arrivals[index] >= time_s - arrival_slack_s
        cause = f"cloud_slow: token {index} arrived {gap:.3f} s after the one before was shown, with nothing " \
                "buffered" if waited_for_it else f"display_late: token {index} was buffered but shown {gap:.3f} s late"
    elif fallback is not None and (handover_index is None or index <= handover_index):
        cause = f"fallback: {fallback}"
    elif handover_index is not None and index == handover_index:
        cause = f"handover_late: the device's first own token came {gap:.3f} s after the last cloud token shown"
    else:
        cause = f"device_slow: the device took {gap:.3f} s for token {index} (slower than the bound)"
    return gap - bound_s, cause
