"""Cloud-only generation (``pdlink generate --mode cloud``): the cloud generates every token, k = max_tokens.

Prompt handling: with ``--package`` the prompt is wrapped in the chat template and tokenized on the
device side with the package tokenizer (token ids cross, the model's EOS ids are sent as stop tokens,
and the text is detokenized locally). Without it the device has no tokenizer, so it sends the prompt
as one user message (``prompt_messages``): the server applies its own chat template and stops at its
model's end of turn, and the text is the server's detokenized token texts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pdlink.common.credentials import client_ssl_context, load_auth_token


class CloudCLIError(ValueError):
    """A cloud command failed in a way to show the user as one line."""


def load_token(args) -> str | None:
    """The bearer token of ``args.auth_token_file``, else ``$PDLINK_AUTH_TOKEN``."""
    return load_auth_token(getattr(args, "auth_token_file", None))


def generate_via_cloud(args) -> dict:
    """``pdlink generate --mode cloud``: the cloud generates every token (k = ``--max-tokens``).

    Reads ``args.cloud`` (URL), ``args.auth_token_file``, ``args.prompt`` / ``args.prompt_file``,
    ``args.max_tokens``, ``args.temperature``, ``args.top_p``, ``args.top_k``, ``args.seed``,
    ``args.stop``, ``args.raw`` and ``args.package`` (optional; see the module doc), plus the optional
    ``args.model_id`` and ``args.cloud_ca_file``. Returns the engine contract's dict with ``mode: "cloud"``
    and the cloud timings. Raises ``CloudCLIError`` (a ValueError) for anything the user must fix.
    """
    from pdlink.common.client import CloudError
    from pdlink.common.protocol import LocalProtocolError

    url = getattr(args, "cloud", None)
    if not url:
        raise CloudCLIError("--mode cloud needs --cloud ws://HOST:PORT")
    if args.max_tokens < 1:
        raise CloudCLIError("--max-tokens must be >= 1")
    try:
        return asyncio.run(_generate(args, url))
    except CloudError as exc:
        raise CloudCLIError(f"cloud {url}: {exc}") from exc
    except LocalProtocolError as exc:
        raise CloudCLIError(f"invalid request: {exc.message}") from exc
    except (OSError, TimeoutError) as exc:
        raise CloudCLIError(f"cannot reach the cloud at {url}: {exc or type(exc).__name__}") from exc


def _read_prompt(args) -> str:
    if getattr(args, "prompt", None) is not None:
        return args.prompt
    path = Path(args.prompt_file)
    if not path.is_file():
        raise CloudCLIError(f"prompt file {args.prompt_file!r} does not exist")
    return path.read_text()


async def _generate(args, url: str) -> dict:
    from pdlink.common.models import default_model_id
    from pdlink.common.client import CloudClient
    from pdlink.common.protocol import Rejected, SamplingParams, Token

    prompt, tok = _read_prompt(args), None
    model_id = getattr(args, "model_id", None) or "smollm2-135m"
    if getattr(args, "package", None):
        tok, eos = _package_tokenizer(args.package)
        ids = tok.encode(prompt) if getattr(args, "raw", False) else tok.encode_chat(prompt)
        request = dict(prompt_token_ids=ids, stop_token_ids=eos)
        model_id = getattr(args, "model_id", None) or default_model_id(args.package)
    elif getattr(args, "raw", False):
        request = dict(prompt_text=prompt)
    else:
        request = dict(prompt_messages=[{"role": "user", "content": prompt}])
    try:
        sampling = SamplingParams(temperature=args.temperature, top_p=getattr(args, "top_p", 1.0),
                                  top_k=getattr(args, "top_k", 0), seed=getattr(args, "seed", None))
    except ValueError as exc:
        raise CloudCLIError(f"invalid request: {exc}") from None
    stops = tuple(getattr(args, "stop", None) or ())
    t0 = time.perf_counter()
    client = await CloudClient.connect(url, model_id=model_id, tokenizer_hash=tok.hash if tok else "",
                                       auth_token=load_token(args), client_name="pdlink-generate",
                                       ssl_context=client_ssl_context(url, getattr(args, "cloud_ca_file", None)))
    async with client:
        limit = client.welcome.limits.max_leading_tokens
        if args.max_tokens > limit:
            raise CloudCLIError(f"the cloud generates at most {limit} tokens per request; lower --max-tokens "
                                "or start the server with a larger --max-leading-tokens")
        t_submit = time.perf_counter()
        stream = await client.prefill(max_leading_tokens=args.max_tokens, sampling=sampling, **request)
        ids, pieces, times, finish = [], [], [], None
        async for event in stream:
            if isinstance(event, Rejected):
                raise CloudCLIError(f"the cloud rejected the request ({event.reason}): {event.message}")
            if not isinstance(event, Token) or finish is not None:
                continue
            times.append(time.perf_counter())
            ids.append(event.token_id)
            pieces.append(event.text)
            text = tok.decode(ids) if tok else "".join(pieces)
            if any(s in text for s in stops):
                finish = "stop"
                await stream.cancel()
        done = stream.done
    if finish is None and done is not None and done.reason == "eos":
        ids, pieces, finish = ids[:-1], pieces[:-1], "stop"  # the stop token itself is not part of the answer
    text = tok.decode(ids) if tok else "".join(pieces)
    hit = min((text.find(s) for s in stops if s in text), default=-1)
    if hit >= 0:
        text = text[:hit]
    if finish is None:
        finish = done.finish_reason if done else "error"
    prompt_tokens = stream.accepted.prompt_tokens if stream.accepted else len(request.get("prompt_token_ids", ()))
    ttft = times[0] - t_submit if times else None
    decode_s = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "text": text, "token_ids": ids, "prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
        "finish_reason": finish, "mode": "cloud", "ttft_s": ttft, "connect_s": t_submit - t0,
        "e2e_s": time.perf_counter() - t0, "prefill_s": ttft, "decode_s": decode_s,
        "prefill_tok_s": prompt_tokens / ttft if ttft else None,
        "decode_tok_s": (len(times) - 1) / decode_s if decode_s else None,
        "cloud_busy_s": done.cloud_busy_s if done else None, "cloud": url, "server": client.welcome.server,
        "handover_index": None, "origins": ["cloud"] * len(ids), "fallback": None,
        "max_gap_s": max((b - a for a, b in zip(times, times[1:])), default=0.0),
    }


def _package_tokenizer(package: str):
    from pdlink.common.package import load_manifest
    from pdlink.common.tokenizer import Tokenizer, end_of_turn_ids

    root = Path(package)
    manifest = load_manifest(root, verify_hashes=False)
    tok = Tokenizer(root / manifest.tokenizer["file"], manifest.tokenizer)
    return tok, sorted(end_of_turn_ids(manifest.config.eos_token_ids, tok))
