"""One chat client of ``pdlink bench assistant``: a multi-turn conversation over the OpenAI HTTP API (SSE),
timed at the client, each turn's server record (``x_pdlink``) kept beside it."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field


@dataclass
class TurnRecord:
    """What one client saw of one turn: TTFT and gaps between shown tokens (client clock), and the server's
    ``x_pdlink`` (origins, hand-over, fallback, cloud seconds, reused prompt tokens)."""

    client: int
    turn: int
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    text: str = ""
    x_pdlink: dict | None = None
    error: str | None = None

    def to_json(self) -> dict:
        x = self.x_pdlink or {}
        return {"client": self.client, "turn": self.turn, "ttft_s": self.ttft_s, "gaps_s": self.gaps_s,
                "error": self.error, "server_ttft_s": x.get("ttft_s"), "origins": x.get("origins"),
                "handover_index": x.get("handover_index"), "fallback": x.get("fallback"),
                "cloud_busy_s": x.get("cloud_busy_s"), "cached_prompt_tokens": x.get("cached_prompt_tokens")}


def stream_turn(base_url: str, body: dict, record: TurnRecord, timeout_s: float = 600.0) -> None:
    """POST one streamed chat request and fill ``record`` as its chunks arrive."""
    req = urllib.request.Request(base_url + "/v1/chat/completions", data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    last = None
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                record.error = chunk["error"]["message"]
                break
            delta = chunk["choices"][0].get("delta", {}) if chunk["choices"] else {}
            if delta.get("content") and chunk.get("x_pdlink", {}).get("origin"):
                now = time.perf_counter() - t0
                if last is None:
                    record.ttft_s = now
                else:
                    record.gaps_s.append(now - last)
                last = now
                record.text += delta["content"]
            if chunk["choices"] and chunk["choices"][0].get("finish_reason"):
                record.x_pdlink = chunk.get("x_pdlink")


def conversation(base_url: str, model: str, client: int, first_prompt: str, follow_ups: list[str], max_tokens: int,
                 mode: str) -> list[TurnRecord]:
    """A conversation of ``1 + len(follow_ups)`` turns, each turn carrying the whole history (as OpenAI
    clients do); greedy, so every run of it asks the same."""
    messages, out = [], []
    for turn, text in enumerate([first_prompt, *follow_ups]):
        messages.append({"role": "user", "content": text})
        record = TurnRecord(client, turn)
        try:
            stream_turn(base_url, {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                                   "x_pdlink": {"mode": mode}}, record)
        except OSError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        out.append(record)
        messages.append({"role": "assistant", "content": record.text})
    return out
