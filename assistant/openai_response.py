"""OpenAI's response shapes for one finished request or one streamed token, with the ``x_pdlink`` record."""

from __future__ import annotations

import time

from pdlink.edge.session import SessionResult, SessionToken

CHAT, COMPLETION = "chat.completion", "text_completion"


def usage(result: SessionResult) -> dict:
    n = len(result.token_ids)
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": n, "total_tokens": result.prompt_tokens + n,
            "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens}}


def x_pdlink(result: SessionResult, cloud_url: str | None, timeline: bool = False) -> dict:
    """What the P/D session did: origin of each token, hand-over, TTFT, fallback, cloud seconds."""
    out = {"mode": result.mode, "origins": result.origins, "handover_index": result.handover_index,
           "ttft_s": result.ttft_s, "fallback": result.fallback, "cloud_busy_s": result.cloud_busy_s,
           "cloud": cloud_url if result.settings.get("use_cloud") and result.mode != "device" else None,
           "cloud_tokens": result.origins.count("cloud"), "cached_prompt_tokens": result.cached_prompt_tokens,
           "max_gap_s": result.max_gap_s, "e2e_s": result.e2e_s,
           "settings": {k: result.settings.get(k) for k in ("use_cloud", "k", "pace_s", "reason")}}
    if timeline:
        out["timeline"] = result.timeline.to_json()
    return out


class ResponseBuilder:
    """Builds the bodies of one request: the whole response, or its stream's chunks."""

    def __init__(self, kind: str, request_id: str, model: str):
        self.kind, self.id, self.model, self.created = kind, request_id, model, int(time.time())

    def _base(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def _choice(self, text: str, finish_reason: str | None, delta: bool, role: bool = False) -> dict:
        if self.kind == COMPLETION:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        content = {"role": "assistant", "content": text} if role or not delta else {"content": text}
        return {"index": 0, ("delta" if delta else "message"): content, "logprobs": None, "finish_reason": finish_reason}

    def full(self, result: SessionResult, pd: dict) -> dict:
        """The non-streamed response."""
        obj = CHAT if self.kind == CHAT else COMPLETION
        return {**self._base(obj), "choices": [self._choice(result.text, str(result.finish_reason), delta=False)],
                "usage": usage(result), "x_pdlink": pd}

    def _chunk_obj(self) -> str:
        return "chat.completion.chunk" if self.kind == CHAT else COMPLETION

    def first_chunk(self) -> dict | None:
        """Chat streams open with the assistant's role (OpenAI does so); completions have no such chunk."""
        if self.kind != CHAT:
            return None
        return {**self._base(self._chunk_obj()), "choices": [self._choice("", None, delta=True, role=True)]}

    def token_chunk(self, tok: SessionToken) -> dict:
        """One shown token: its text, and in ``x_pdlink`` its origin, index and time since submit."""
        return {**self._base(self._chunk_obj()), "choices": [self._choice(tok.text, None, delta=True)],
                "x_pdlink": {"index": tok.index, "origin": tok.origin, "time_s": tok.time_s}}

    def text_chunk(self, text: str) -> dict:
        """Text held back for a stop string that never completed, shown at the end."""
        return {**self._base(self._chunk_obj()), "choices": [self._choice(text, None, delta=True)]}

    def last_chunk(self, result: SessionResult, pd: dict, with_usage: bool) -> list[dict]:
        """The finish reason and the request's ``x_pdlink``; then usage alone when asked (``include_usage``)."""
        out = [{**self._base(self._chunk_obj()), "choices": [self._choice("", str(result.finish_reason), delta=True)],
                "x_pdlink": pd}]
        if with_usage:
            out.append({**self._base(self._chunk_obj()), "choices": [], "usage": usage(result)})
        return out
