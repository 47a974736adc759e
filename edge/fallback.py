"""Why the device went on without the cloud: one enum, named once.

A ``str`` enum, so the JSON output and the logs keep their plain strings (``"rejected: overloaded"``).
"""

from __future__ import annotations

from enum import Enum


class Fallback(str, Enum):
    """Why the device carries on alone; ``because(detail)`` is the string every output shows."""

    CLOUD_NOT_NEEDED = "cloud_not_needed"  # the device alone meets the TTFT SLO
    CLOUD_SLOW = "cloud_slow"  # its first token would come after the device's own
    REJECTED = "rejected"  # the cloud answered ``rejected`` (overloaded, prompt too long, ...)
    CLOUD_ERROR = "cloud_error"  # handshake refused, tokenizer mismatch, error frame
    CLOUD_REFUSED_REQUEST = "cloud_refused_request"  # the request broke the protocol's limits
    CLOUD_TIMEOUT = "cloud_timeout"
    CLOUD_UNREACHABLE = "cloud_unreachable"
    CLOUD_PROTOCOL_ERROR = "cloud_protocol_error"  # tokens out of order
    CLOUD_ENDED = "cloud_ended"  # ``done`` before any token, or with an error

    def because(self, detail: str = "") -> str:
        return f"{self.value}: {detail}" if detail else self.value

    def __str__(self) -> str:
        return self.value
