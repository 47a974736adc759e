"""The HTTP shell: FastAPI routes over ``Assistant`` (OpenAI's ``/v1`` API, the chat page, health, metrics).

Streams are server-sent events (``sse-starlette``) in OpenAI's format, ending with ``data: [DONE]``; every
error, from malformed JSON to a flood, is an OpenAI error object with its HTTP status.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from pdlink.assistant.errors import APIError, invalid, server_error
from pdlink.assistant.openai_response import CHAT, COMPLETION, ResponseBuilder, x_pdlink
from pdlink.assistant.openai_schema import ChatCompletionRequest, CompletionRequest
from pdlink.assistant.service import Assistant, Job
from pdlink.edge.session import SessionResult

STATIC = Path(__file__).resolve().parent / "static"


def create_app(assistant: Assistant) -> FastAPI:
    """The ASGI app serving ``assistant``; closing the app (lifespan end) closes the assistant."""

    @asynccontextmanager
    async def lifespan(_app):
        yield
        assistant.close()

    app = FastAPI(title="pdlink assistant", lifespan=lifespan, docs_url=None, redoc_url=None)
    _error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health")
    async def health():
        body = {"status": "shutting_down" if assistant.closing else "ok", "model": assistant.model_id,
                "cloud": assistant.cfg.cloud, "default_mode": assistant.cfg.default_mode,
                "inflight": assistant.inflight, "max_concurrency": assistant.cfg.max_concurrency,
                "kept_conversations": len(assistant.kv), "sequences": len(assistant.batching.sequences)}
        return JSONResponse(body, status_code=503 if assistant.closing else 200)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(assistant.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": assistant.model_id, "object": "model", "created": 0,
                                            "owned_by": "pdlink"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest):
        tok = assistant.tokenizer
        ids = tok.encode(tok.apply_chat_template(body.template_messages(), add_generation_prompt=True))
        return await _answer(assistant, CHAT, body, assistant.job("chat", body, ids))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        ids = list(body.prompt) if isinstance(body.prompt, list) else assistant.tokenizer.encode(body.prompt)
        return await _answer(assistant, COMPLETION, body, assistant.job("completion", body, ids))

    return app


async def _answer(assistant: Assistant, kind: str, body, job: Job):
    builder = ResponseBuilder(kind, job.id, assistant.model_id)
    want_timeline = bool(body.x_pdlink and body.x_pdlink.timeline)
    assistant.admit()
    if body.stream:
        # on shutdown a stream gets the grace period to finish, then it is cancelled (and frees its sequence)
        return EventSourceResponse(_events(assistant, builder, job, want_timeline, body.include_usage), sep="\n",
                                   shutdown_grace_period=assistant.cfg.shutdown_grace_s)
    result = None
    async for item in assistant.run(job):
        if isinstance(item, SessionResult):
            result = item
    return JSONResponse(builder.full(result, x_pdlink(result, assistant.cfg.cloud, want_timeline)))


async def _events(assistant: Assistant, builder: ResponseBuilder, job: Job, timeline: bool, with_usage: bool):
    """The SSE stream of one request (OpenAI's chunks, then ``[DONE]``); an error mid-stream is an error event."""
    first = builder.first_chunk()
    if first is not None:
        yield json.dumps(first)
    try:
        async for item in assistant.run(job):
            if not isinstance(item, SessionResult):
                yield json.dumps(builder.token_chunk(item))
                continue
            if item.tail_text:
                yield json.dumps(builder.text_chunk(item.tail_text))
            for chunk in builder.last_chunk(item, x_pdlink(item, assistant.cfg.cloud, timeline), with_usage):
                yield json.dumps(chunk)
    except APIError as exc:
        yield json.dumps(exc.body())
        return
    yield "[DONE]"


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            err = invalid("We could not parse the JSON body of your request: it is not valid JSON.")
        else:
            loc = [str(p) for p in first.get("loc", ()) if p != "body"]
            param = ".".join(loc) or None
            err = invalid(f"{param or 'body'}: {first.get('msg', 'invalid value')}", param=param)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        err = APIError(exc.status_code, str(exc.detail), type="invalid_request_error")
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def crash(_request: Request, exc: Exception):
        err = server_error(f"internal error: {type(exc).__name__}: {exc}")
        return JSONResponse(err.body(), status_code=500)
