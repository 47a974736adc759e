"""What happened in one session request, on one clock (seconds since submit), and its picture."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Timeline:
    """Events of one request; every time is seconds since the request was submitted."""

    cloud_tokens: list[tuple[float, int]] = field(default_factory=list)  # (arrival, index)
    local_steps: list[tuple[float, float, int, int]] = field(default_factory=list)  # (start, end, tokens, computed)
    shown: list[tuple[float, int, str]] = field(default_factory=list)  # (time, index, origin)
    prompt_tokens: int = 0
    handover_s: float | None = None
    stop_sent_s: float | None = None
    fallback_s: float | None = None
    refined_s: float | None = None  # a refined prompt arrived (``prompt_tokens`` is then the device's prompt)

    def gaps(self) -> np.ndarray:
        """Time between consecutive shown tokens."""
        times = np.array([t for t, _, _ in self.shown])
        return np.diff(times) if times.size > 1 else np.zeros(0)

    def to_json(self) -> dict:
        return {"cloud_tokens": self.cloud_tokens, "local_steps": self.local_steps, "shown": self.shown,
                "prompt_tokens": self.prompt_tokens, "handover_s": self.handover_s, "stop_sent_s": self.stop_sent_s,
                "fallback_s": self.fallback_s, "refined_s": self.refined_s}


def plot_timeline(timeline: Timeline, path, title: str) -> None:
    """Cloud token arrivals, local KV progress, shown tokens by origin and the hand-over, against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    prompt = timeline.prompt_tokens
    if timeline.local_steps:
        kv = ax.twinx()
        xs = [0.0] + [end for _, end, _, _ in timeline.local_steps]
        ys = [0] + [computed for *_, computed in timeline.local_steps]
        kv.step(xs, ys, where="post", color="tab:green", alpha=0.6, label="local KV (tokens, right axis)")
        kv.axhline(prompt, color="tab:green", ls=":", lw=0.8)
        kv.set_ylabel("tokens in the local KV cache (dotted: prompt)", color="tab:green")
        kv.legend(fontsize=7, loc="lower right")
    if timeline.cloud_tokens:
        t, i = zip(*timeline.cloud_tokens)
        ax.plot(t, i, ".", color="tab:blue", ms=3, label="cloud token arrives")
    for origin, color in (("cloud", "tab:cyan"), ("device", "tab:orange")):
        pts = [(t, i) for t, i, o in timeline.shown if o == origin]
        if pts:
            t, i = zip(*pts)
            ax.plot(t, i, "|", color=color, ms=6, label=f"shown ({origin})")
    if timeline.handover_s is not None:
        ax.axvline(timeline.handover_s, color="tab:red", ls="--", lw=1, label="hand-over")
    if timeline.fallback_s is not None:
        ax.axvline(timeline.fallback_s, color="black", ls=":", lw=1, label="fallback")
    if timeline.refined_s is not None:
        ax.axvline(timeline.refined_s, color="tab:purple", ls="-.", lw=1, label="refined prompt arrives")
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since submit")
    ax.set_ylabel("answer token index")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
