"""Prompts cut from real text that ships with Python (no text written by this project): for warm-ups,
profiling, benchmarks, tests and the demo."""

from __future__ import annotations


def real_text(min_chars: int) -> str:
    """The Python language reference topics (``pydoc_data``), concatenated up to ``min_chars``."""
    from pydoc_data.topics import topics

    text, keys = "", sorted(topics)
    for key in keys:
        text += topics[key]
        if len(text) >= min_chars:
            break
    return text


def prompt_of_length(tokenizer_encode, num_tokens: int, skip_tokens: int = 0) -> list[int]:
    """Exactly ``num_tokens`` token ids of real text (raw, no chat template), after the first ``skip_tokens``."""
    ids = tokenizer_encode(real_text((skip_tokens + num_tokens) * 8))
    if len(ids) < skip_tokens + num_tokens:
        raise ValueError(f"real text too short for {skip_tokens} + {num_tokens} tokens")
    return ids[skip_tokens:skip_tokens + num_tokens]


def build_prompt(tokenizer, num_tokens: int, instruction: str = "Summarize the following text.",
                 skip_tokens: int = 0) -> list[int]:
    """A chat prompt of about ``num_tokens`` tokens: an instruction and real text cut to fit (from token
    ``skip_tokens`` of the text on, for prompts that differ)."""
    overhead = len(tokenizer.encode_chat(instruction + "\n\n"))
    body = tokenizer.decode(prompt_of_length(tokenizer.encode, max(8, num_tokens - overhead), skip_tokens))
    return tokenizer.encode_chat(instruction + "\n\n" + body)


PLANTED_FACT = "The access code for the archive room is 7305."
PLANTED_QUESTION = "What is the access code for the archive room?"
PLANTED_ANSWER = "7305"


def planted_fact_text(num_chars: int, depth: float = 0.5) -> str:
    """Real text of about ``num_chars`` characters with :data:`PLANTED_FACT` put in at ``depth`` (0..1,
    at a sentence end) and :data:`PLANTED_QUESTION` at the end: a retrieval check for prompt refinement."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError("depth must be in [0, 1]")
    body = real_text(num_chars)[:num_chars]
    cut = body.rfind(". ", 0, int(len(body) * depth)) + 1
    return f"{body[:cut]} {PLANTED_FACT}{body[cut:]}\n\n{PLANTED_QUESTION}"


def fact_positions(ids: list[int], fact_ids: list[int]) -> range:
    """Where the planted fact's tokens (``fact_ids``, tokenized with a leading space) sit in ``ids``."""
    core = fact_ids[1:]  # the first token may merge with the text before it
    for start in range(len(ids) - len(core) + 1):
        if ids[start:start + len(core)] == core:
            return range(start, start + len(core))
    raise ValueError("the planted fact is not in the prompt")
