"""Why an answer ended: one enum for the device, the cloud client and every front end.

A ``str`` enum, so JSON output keeps the plain strings (``"stop"``, ``"length"``).
"""

from __future__ import annotations

from enum import Enum


class FinishReason(str, Enum):
    """Why an answer ended (OpenAI's vocabulary)."""

    STOP = "stop"  # an end-of-turn token or a stop string
    LENGTH = "length"  # max_tokens reached (or the cloud's k in cloud mode)
    ERROR = "error"  # cloud mode only: the cloud failed and nobody else makes tokens

    def __str__(self) -> str:
        return self.value
