"""The requests a trace replay sends: the trace reshaped by the run's caps, with prompts of real text cut to the
trace's exact token lengths, and the device profile the replay emulates."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pdlink.traces.report import TraceBenchConfig


@dataclass(frozen=True)
class ReplayRequest:
    """One request of the replay: when it arrives (seconds after the first), its prompt ids and answer length."""

    index: int
    arrival_s: float
    prompt_ids: tuple[int, ...]
    max_tokens: int
    trace_prompt_tokens: int  # the trace's length before the --max-prompt-tokens cut
    trace_output_tokens: int


def trace_workload(cfg: TraceBenchConfig):
    """The trace of ``cfg`` filtered (``min_prompt_tokens``), cut to ``max_requests`` and rate-scaled.

    Raises FileNotFoundError (the trace or its folder is missing), TraceFormatError (a bad row) and ValueError
    (no request is left after the filter). Call it before anything expensive starts."""
    from pdlink.traces import load_trace

    workload = load_trace(cfg.trace, cfg.traces_dir).filter_input(min_tokens=cfg.min_prompt_tokens)
    if not len(workload):
        raise ValueError(f"trace {cfg.trace!r} has no request with at least {cfg.min_prompt_tokens} prompt tokens; "
                         "lower --min-prompt-tokens")
    return workload.first(cfg.max_requests).scale_rate(cfg.rate_scale)


def replay_requests(cfg: TraceBenchConfig, tokenizer, workload=None) -> list[ReplayRequest]:
    """The replay's requests: prompts longer than ``max_prompt_tokens`` cut, answers capped at
    ``max_output_tokens`` (at least one token), prompt ids of real text of the exact length (seeded)."""
    from pdlink.traces import PromptSynthesizer

    workload = workload if workload is not None else trace_workload(cfg)
    synthesizer = PromptSynthesizer(tokenizer, seed=cfg.seed)
    out = []
    for i, r in enumerate(workload):
        cut = replace(r, input_tokens=max(1, min(r.input_tokens, cfg.max_prompt_tokens)))
        out.append(ReplayRequest(index=i, arrival_s=r.arrival_s, prompt_ids=tuple(synthesizer.token_ids(cut, i)),
                                 max_tokens=max(1, min(r.output_tokens, cfg.max_output_tokens)),
                                 trace_prompt_tokens=r.input_tokens, trace_output_tokens=r.output_tokens))
    return out
