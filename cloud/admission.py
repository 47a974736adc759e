"""Admission control for the cloud scheduler: the measured speeds, the TTFT estimate and the verdict.

A new request is refused at once, with a hint when to retry, when ``max_requests`` are live or its
estimated TTFT is over ``ttft_budget_s``, instead of timing out in a queue (P/D-Serve's rejection
signal). Pure bookkeeping: the scheduler feeds it every computed step and asks it about newcomers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection

from pdlink.cloud.request import Request

if TYPE_CHECKING:
    from pdlink.cloud.scheduler import SchedulerConfig


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on a new request; a refused one says why (``message``) and when to retry."""

    accepted: bool
    estimated_ttft_s: float
    message: str = ""
    retry_after_s: float | None = None
    queue_position: int = 0  # requests ahead of it in the prefill queue, once accepted


class AdmissionControl:
    """Moving averages of the prefill speed and the decode step time, and the admission verdicts built on them."""

    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.prefill_tok_s = cfg.initial_prefill_tok_s  # moving average of measured prefill steps
        self.prefill_measured = False  # False: the next measured prefill replaces the average
        self.decode_step_s = 0.0

    def measure(self, prefill_tokens: int, prefill_s: float, decode_s: float | None) -> None:
        """Fold one computed step into the averages (``decode_s`` None: the step decoded nothing)."""
        if prefill_tokens and prefill_s > 0:
            rate = prefill_tokens / prefill_s
            self.prefill_tok_s = self._ema(self.prefill_tok_s, rate) if self.prefill_measured else rate
            self.prefill_measured = True
        if decode_s is not None:
            self.decode_step_s = self._ema(self.decode_step_s or decode_s, decode_s)

    def estimate_ttft(self, prompt_tokens: int, queue: Collection[Request], decoding: Collection[Request]) -> float:
        """Seconds until a new ``prompt_tokens`` request would get its first token, behind ``queue``
        (requests still reading their prompt) while ``decoding`` requests owe tokens.

        Round-robin prefill: the newcomer needs ``ceil(p / chunk)`` turns, and in each round every
        queued request reads up to one chunk first, so each adds at most that many chunks of work.
        Each step also pays one decode when some request decodes now or will once its prompt is in."""
        p, chunk = max(1, prompt_tokens), self.cfg.prefill_chunk_tokens
        rounds = math.ceil(p / chunk)
        tokens = p + sum(min(r.remaining_prefill, rounds * chunk) for r in queue)
        steps = max(rounds, math.ceil(tokens / self.cfg.step_token_budget))
        decoders = decoding or any(r.max_tokens > 1 for r in queue)
        decode_s = self.decode_step_s * steps if decoders else 0.0
        return tokens / self.prefill_tok_s + decode_s

    def decide(self, prompt_tokens: int, num_live: int, queue: Collection[Request],
               decoding: Collection[Request]) -> Admission:
        """Accept, or refuse when ``max_requests`` are live or the estimate is over ``ttft_budget_s``."""
        cfg, estimate = self.cfg, self.estimate_ttft(prompt_tokens, queue, decoding)
        if num_live >= cfg.max_requests:
            return Admission(False, estimate, f"the server is at its limit of {cfg.max_requests} requests", 1.0)
        if estimate > cfg.ttft_budget_s:
            return Admission(False, estimate, f"estimated TTFT {estimate:.2f} s is over the budget of "
                             f"{cfg.ttft_budget_s:g} s", round(max(0.1, estimate - cfg.ttft_budget_s), 3))
        return Admission(True, estimate)

    def _ema(self, old: float, new: float) -> float:
        return (1 - self.cfg.ema_alpha) * old + self.cfg.ema_alpha * new
