"""How a session's answer is shown on a terminal: origin marks, the one-line summary, the plot title."""

from __future__ import annotations

CLOUD_COLOR, DEVICE_COLOR, RESET = "\033[36m", "\033[33m", "\033[0m"


def marked(tok, show_origin: bool, previous_origin: str | None) -> str:
    """The token's text, preceded by ``[origin]`` where the origin changes (when asked)."""
    if not show_origin or tok.origin == previous_origin:
        return tok.text
    return f"[{tok.origin}]{tok.text}"


def colored(tok) -> str:
    """The token's text in the color of its origin (cyan: cloud, yellow: device)."""
    return f"{CLOUD_COLOR if tok.origin == 'cloud' else DEVICE_COLOR}{tok.text}{RESET}"


def timeline_title(result) -> str:
    emu = result.emulation["device"]
    device = f"{emu['device_profile']} (emulated)" if emu.get("device_profile") else "this machine"
    return (f"{result.mode} mode, {result.prompt_tokens} prompt tokens, device {device}, TTFT {result.ttft_s or 0:.2f} s, "
            f"hand-over at {result.handover_index}, fallback {result.fallback}")


def summary_line(result) -> str:
    origins = result.origins
    return (f"[{result.mode}] TTFT {result.ttft_s or 0:.2f} s | {origins.count('cloud')} cloud + "
            f"{origins.count('device')} device tokens | hand-over {result.handover_index} | "
            f"max gap {result.max_gap_s * 1000:.0f} ms | cloud busy {result.cloud_busy_s} s | fallback {result.fallback}"
            + (f" | refined prompt {result.refinement}" if result.refinement else ""))
