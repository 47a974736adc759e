"""``pdlink cloud probe``: check a cloud server from the command line (handshake, TTFT, tokens)."""

from __future__ import annotations

import json
import ssl
import time
from typing import TextIO

from pdlink.common.client import CloudClient, CloudError
from pdlink.common.models import DEFAULT_MODEL
from pdlink.common.protocol import Accepted, Done, Rejected, Token


async def probe(url: str, *, prompt: str, max_tokens: int = 16, model_id: str = DEFAULT_MODEL,
                auth_token: str | None = None, ssl_context: ssl.SSLContext | None = None, timeout_s: float = 60.0,
                out: TextIO | None = None) -> dict:
    """Send ``prompt`` as one user message and stream ``max_tokens`` leading tokens; print each step to
    ``out`` and return a report (``ok`` False, with ``error``, when the server refused or failed)."""
    say = (lambda line: print(line, file=out, flush=True)) if out else (lambda line: None)
    report: dict = {"url": url, "ok": False}
    t0 = time.perf_counter()
    try:
        client = await CloudClient.connect(url, model_id=model_id, auth_token=auth_token, client_name="pdlink-probe",
                                           open_timeout_s=min(timeout_s, 30.0), event_timeout_s=timeout_s,
                                           ssl_context=ssl_context)
    except (CloudError, OSError, TimeoutError) as exc:
        report["error"] = f"connect failed: {exc or type(exc).__name__}"
        say(report["error"])
        return report
    async with client:
        w = client.welcome
        report["handshake_s"] = time.perf_counter() - t0
        report["welcome"] = {"server": w.server, "protocol_version": w.protocol_version, "model_id": w.model_id,
                             "tokenizer_hash": w.tokenizer_hash, "limits": {
                                 k: getattr(w.limits, k) for k in ("max_prompt_tokens", "max_leading_tokens",
                                                                   "max_concurrent_requests", "max_message_bytes")}}
        say(f"handshake {report['handshake_s'] * 1000:.1f} ms: {json.dumps(report['welcome'])}")
        t_submit = time.perf_counter()
        stream = await client.prefill(prompt_messages=[{"role": "user", "content": prompt}],
                                      max_leading_tokens=min(max_tokens, w.limits.max_leading_tokens))
        tokens = []
        try:
            async for event in stream:
                now = time.perf_counter() - t_submit
                if isinstance(event, Accepted):
                    say(f"accepted: {event.prompt_tokens} prompt tokens, estimated TTFT {event.estimated_ttft_s:.3f} s")
                elif isinstance(event, Token):
                    if event.index == 0:
                        report["ttft_s"] = now
                        say(f"TTFT {now * 1000:.1f} ms")
                    tokens.append({"index": event.index, "token_id": event.token_id, "text": event.text,
                                   "t_s": round(now, 4)})
                    say(f"  token {event.index:3d} id={event.token_id:6d} t={now * 1000:8.1f} ms {event.text!r}")
                elif isinstance(event, Rejected):
                    report["error"] = f"rejected ({event.reason}): {event.message}"
                    say(report["error"])
                elif isinstance(event, Done):
                    report.update(done_reason=event.reason, cloud_busy_s=event.cloud_busy_s)
                    say(f"done: {event.reason}, {event.tokens_sent} tokens, cloud busy {event.cloud_busy_s:.3f} s")
        except (CloudError, TimeoutError) as exc:
            report["error"] = f"stream failed: {exc or type(exc).__name__}"
            say(report["error"])
    report["tokens"] = tokens
    report["text"] = "".join(t["text"] for t in tokens)
    report["ok"] = "error" not in report and "done_reason" in report
    if report["ok"]:
        say(f"text: {report['text']!r}")
    return report
