"""Chat prompts of different lengths, the long ones cut from real text shipped with Python."""

from __future__ import annotations


def _python_reference_text(chars: int) -> str:
    from pydoc_data.topics import topics

    return topics["execmodel"][:chars]


def chat_prompts() -> list[str]:
    """Five user messages, from one line to a ~900-token document."""
    return [
        "What is the capital of France?",
        "Write a short poem about the sea and the wind.",
        "List three ways to save energy at home and explain each in one sentence.",
        "Summarize the following text in a few sentences.\n\n" + _python_reference_text(1500),
        "Explain the main ideas of this text to a beginner.\n\n" + _python_reference_text(4000),
    ]
