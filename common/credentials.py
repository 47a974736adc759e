"""How a device proves itself to the cloud and checks the cloud: the bearer token and the TLS context."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

AUTH_TOKEN_ENV = "PDLINK_AUTH_TOKEN"


def load_auth_token(path: str | None) -> str | None:
    """The bearer token from ``path`` (surrounding whitespace dropped), else ``$PDLINK_AUTH_TOKEN``, else None.
    Raises ValueError for a missing or empty file."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"auth token file {path!r} does not exist")
        token = file.read_text().strip()
        if not token:
            raise ValueError(f"auth token file {path!r} is empty; put the token on its first line")
        return token
    return os.environ.get(AUTH_TOKEN_ENV) or None


def client_ssl_context(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """None for ws://; for wss:// the system's trust store, or ``ca_file``."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=ca_file)
