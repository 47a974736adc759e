"""Benchmark inputs cut from real text that ships with Python (no text written by this project)."""

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


def prompt_of_length(tokenizer_encode, num_tokens: int) -> list[int]:
    """Exactly ``num_tokens`` token ids of real text (raw, no chat template)."""
    ids = tokenizer_encode(real_text(num_tokens * 8))
    if len(ids) < num_tokens:
        raise ValueError(f"real text too short for {num_tokens} tokens")
    return ids[:num_tokens]
