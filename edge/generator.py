"""Text generation on the engine: sampling loop, stop tokens/strings, streaming text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from pdlink.edge.engine import Engine
from pdlink.common.sampling import Sampler, SamplingParams
from pdlink.common.tokenizer import StreamingDetokenizer, end_of_turn_ids


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request settings of a local generation."""

    max_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's end-of-sequence tokens
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop_strings):
            raise ValueError("stop strings must be non-empty")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as it is produced."""

    index: int
    token_id: int
    text: str
    time_s: float


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (token or string) or "length"
    prefill_s: float
    decode_s: float


class Generation:
    """A single generation over an engine; iterate for ``TokenEvent``s, then read ``result``."""

    def __init__(self, engine: Engine, prompt_ids: list[int], cfg: GenerationConfig, seq_id: int | None = None):
        """``seq_id``: continue an existing sequence (``prompt_ids`` are appended to it and the
        sequence is kept afterwards); by default a fresh sequence is made and freed."""
        self.engine, self.prompt_ids, self.cfg, self.seq_id = engine, list(prompt_ids), cfg, seq_id
        if cfg.ignore_eos:
            self._stop_ids: set[int] = set()
        elif cfg.stop_token_ids is not None:
            self._stop_ids = set(cfg.stop_token_ids)
        else:
            self._stop_ids = end_of_turn_ids(engine.model_config.eos_token_ids, engine.tokenizer)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[TokenEvent]:
        engine, cfg = self.engine, self.cfg
        sampler = Sampler(cfg.sampling)
        detok = StreamingDetokenizer(engine.tokenizer)
        seq = engine.add_sequence() if self.seq_id is None else self.seq_id
        text, emitted, ids, reason, hit = "", 0, [], "length", None
        try:
            t0 = time.perf_counter()
            logits = engine.prefill(seq, self.prompt_ids)
            t1 = time.perf_counter()
            for index in range(cfg.max_tokens):
                token = sampler.sample(logits)
                if token in self._stop_ids:
                    reason = "stop"
                    break
                ids.append(token)
                text += detok.add(token)
                hit = _find_stop(text, cfg.stop_strings)
                if hit is not None:
                    text, reason = text[:hit], "stop"
                    yield TokenEvent(index, token, text[emitted:], time.perf_counter())
                    emitted = len(text)
                    break
                safe = len(text) - _held_back(text, cfg.stop_strings)
                yield TokenEvent(index, token, text[emitted:safe], time.perf_counter())
                emitted = safe
                if index + 1 < cfg.max_tokens:
                    logits = engine.decode(seq, token)
            if hit is None:
                text += detok.flush()
            t2 = time.perf_counter()
        finally:
            if self.seq_id is None:
                engine.remove_sequence(seq)
        self.tail_text = text[emitted:]
        self.result = GenerationResult(text, ids, len(self.prompt_ids), reason, t1 - t0, t2 - t1)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [text.find(s) for s in stops if s in text]
    return min(hits) if hits else None


def generate(engine: Engine, prompt_ids: list[int], cfg: GenerationConfig) -> GenerationResult:
    """Run a generation to the end and return its result."""
    gen = Generation(engine, prompt_ids, cfg)
    for _ in gen:
        pass
    return gen.result
