"""The assistant's core over the P/D session: checks a request, runs it through a ``Session`` on the shared
engine, keeps its KV cache for the conversation's next turn, and counts it.

One ``Session`` per request, all over one ``BatchingEngine``: the sessions' engine steps meet in its batch
core, so concurrent requests decode together. HTTP lives in ``pdlink.assistant.app``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from pdlink.assistant.batch_engine import BatchingEngine
from pdlink.assistant.config import AssistantConfig
from pdlink.assistant.errors import APIError, invalid, model_not_found, overloaded, shutting_down
from pdlink.assistant.metrics import AssistantMetrics
from pdlink.assistant.prefix_cache import PrefixCache
from pdlink.common.credentials import load_auth_token
from pdlink.common.models import default_model_id
from pdlink.common.sampling import SamplingParams
from pdlink.edge.cloud_link import CloudTarget
from pdlink.edge.device_profile import resolve_profile
from pdlink.edge.emulation import NetworkEmulation
from pdlink.edge.session import GenerationRequest, Session, SessionConfig, SessionResult, SessionToken

log = logging.getLogger("pdlink.assistant")


@dataclass(frozen=True)
class Job:
    """A checked request: its prompt ids and the session request, ready to run."""

    id: str
    endpoint: str
    prompt_ids: list[int]
    request: GenerationRequest


class Assistant:
    """The loaded package, the shared engine, the kept conversations and the limits of ``AssistantConfig``."""

    def __init__(self, cfg: AssistantConfig, engine=None):
        """``engine``: an ``Engine`` (or a stand-in for tests) to use instead of loading ``cfg.package``."""
        self.cfg = cfg
        if engine is None:
            from pdlink.edge.engine import Engine, EngineConfig

            engine = Engine(EngineConfig(package=cfg.package, num_threads=cfg.threads,
                                         context_window=cfg.context_window,
                                         max_num_sequences=cfg.max_concurrency + cfg.kept_conversations))
        self.model_id = cfg.model_id or default_model_id(cfg.package)
        self.profile = self._profile(engine)
        self.batching = BatchingEngine(engine, max_batch=cfg.max_concurrency, prefill_chunk=cfg.prefill_chunk)
        self.kv = PrefixCache(cfg.kept_conversations, self.batching.remove_sequence)
        cloud = None
        if cfg.cloud:
            cloud = CloudTarget(cfg.cloud, auth_token=load_auth_token(cfg.auth_token_file),
                                model_id=default_model_id(cfg.package))
        self.session_cfg = SessionConfig(package=cfg.package, cloud=cloud, device_profile=cfg.device_profile,
                                         network=NetworkEmulation(rtt_ms=cfg.net_rtt_ms),
                                         max_gap_s=cfg.max_gap_ms / 1000, refine=cfg.refine,
                                         context_window=cfg.context_window)
        self.inflight = 0
        self.closing = False
        self.metrics = AssistantMetrics(self)

    def _profile(self, engine):
        """The profile pd settings use: the emulated one, else this machine's (measured once, stored)."""
        if self.cfg.device_profile is not None:
            return resolve_profile(self.cfg.device_profile)
        if not self.cfg.cloud or not hasattr(engine, "manifest"):
            return None
        from pdlink.edge.device_profile import stored_or_measured_profile

        return stored_or_measured_profile(engine)

    @property
    def tokenizer(self):
        return self.batching.tokenizer

    def close(self) -> None:
        """Free the kept conversations and stop the engine thread (after in-flight requests ended)."""
        self.closing = True
        self.kv.clear()
        self.batching.close()

    # ------------------------------------------------------------------ checking a request

    def job(self, endpoint: str, body, prompt_ids: list[int]) -> Job:
        """Check a parsed request (``openai_schema``) against this server: model, mode, sampling, context."""
        if self.closing:
            raise shutting_down()
        if body.model != self.model_id:
            raise model_not_found(body.model, self.model_id)
        opts = body.x_pdlink
        mode = (opts.mode if opts else None) or self.cfg.default_mode
        if mode != "device" and self.session_cfg.cloud is None:
            raise invalid(f"mode {mode!r} needs a cloud; start the server with --cloud ws://HOST:PORT",
                          param="x_pdlink.mode")
        window = self.batching.context_window
        max_tokens = body.max_tokens or max(1, min(self.cfg.default_max_tokens, window - len(prompt_ids)))
        if not prompt_ids:
            raise invalid("the prompt is empty", param="prompt")
        if len(prompt_ids) + max_tokens > window:
            raise invalid(f"This model's maximum context length is {window} tokens. However, you "
                          f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, "
                          f"{max_tokens} in the completion). Please reduce the length of the messages or completion.",
                          param="messages", code="context_length_exceeded")
        if any(t < 0 or t >= self.batching.model_config.vocab_size for t in prompt_ids):
            raise invalid("token ids must be in the vocabulary", param="prompt")
        try:
            sampling = SamplingParams(temperature=1.0 if body.temperature is None else body.temperature,
                                      top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed)
            request = GenerationRequest(mode=mode, max_tokens=max_tokens, sampling=sampling, stop=tuple(body.stop or ()),
                                        k=opts.k if opts else None, refine=opts.refine if opts else None,
                                        reuse_kv=True)
        except ValueError as exc:
            raise invalid(str(exc)) from exc
        return Job(f"{endpoint[:4]}-{uuid.uuid4().hex[:20]}", endpoint, list(prompt_ids), request)

    def admit(self) -> None:
        """Take a slot for a request, or refuse it (429) beyond ``max_concurrency``; ``run`` gives it back."""
        if self.closing:
            raise shutting_down()
        if self.inflight >= self.cfg.max_concurrency:
            self.metrics.requests.labels("any", "-", "429").inc()
            raise overloaded(self.cfg.max_concurrency)
        self.inflight += 1

    # ------------------------------------------------------------------ running it

    async def run(self, job: Job) -> AsyncIterator[SessionToken | SessionResult]:
        """Stream a job's tokens, then its ``SessionResult``; the slot taken by ``admit`` is given back at the
        end. A request that does not finish (client gone, cancelled) frees its sequence."""
        session, finished = None, False
        try:
            session = Session(self.session_cfg, engine=self.batching, profile=self.profile)
            if (reuse := self.kv.take(job.prompt_ids)) is not None:
                seq = self.batching.fork_sequence(reuse.seq, reuse.shared) if reuse.fork else reuse.seq
                session.adopt_kv(seq, reuse.ids)
            stream = session.agenerate(job.prompt_ids, **_fields(job.request))
            try:
                async for tok in stream:
                    yield tok
                finished = True
            finally:
                await stream.aclose()
        except ValueError as exc:
            raise invalid(str(exc)) from exc
        finally:
            self.inflight -= 1
            if session is not None:
                self._after(job, session, finished)
        yield session.last

    def _after(self, job: Job, session: Session, finished: bool) -> None:
        kept = session.take_kv()
        if kept is not None:
            if finished:
                self.kv.put(*kept)
            else:
                self.batching.remove_sequence(kept[0])
        session.engine_thread.shutdown(wait=False)
        if finished:
            self.metrics.observe(job.endpoint, job.request.mode, session.last)
            log.info(request_line(job, session.last, self.cfg.cloud))
        else:
            self.metrics.requests.labels(job.endpoint, job.request.mode, "cancelled").inc()
            log.info("%s %s cancelled (client gone or server stopping); its sequence was freed", job.id, job.endpoint)


def _fields(req: GenerationRequest) -> dict:
    return {name: getattr(req, name) for name in req.__dataclass_fields__}


def request_line(job: Job, result: SessionResult, cloud_url: str | None) -> str:
    """The log line of a finished request: mode, which cloud served it and why it fell back, if it did."""
    used = result.settings.get("use_cloud") and result.mode != "device"
    cloud = f"cloud={cloud_url}" if used else "cloud=none"
    why = "" if used or result.mode == "device" else f" ({result.settings.get('reason')})"
    return (f"{job.id} {job.endpoint} mode={result.mode} {cloud}{why} prompt={result.prompt_tokens} "
            f"reused={result.cached_prompt_tokens} tokens={len(result.token_ids)} "
            f"cloud_tokens={result.origins.count('cloud')} ttft_s={_fmt(result.ttft_s)} "
            f"cloud_busy_s={_fmt(result.cloud_busy_s)} fallback={result.fallback or 'none'} "
            f"finish={result.finish_reason}")


def _fmt(x) -> str:
    return "none" if x is None else f"{x:.3f}"


__all__ = ["APIError", "Assistant", "Job", "request_line"]
