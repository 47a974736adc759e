"""Where the shared trace files are: an explicit folder, else ``$PDLINK_TRACES_DIR``, else ``../shared/traces``
relative to the current directory (the repository checkout). The files are public and never copied into the
repository."""

from __future__ import annotations

import os
from pathlib import Path

TRACES_DIR_FLAG = "--traces-dir"
TRACES_DIR_ENV = "PDLINK_TRACES_DIR"
DEFAULT_TRACES_DIR = Path("..") / "shared" / "traces"
# Named traces -> their file in the traces folder.
NAMED_TRACES = {
    "azure_code": "azure_llm_code_2023.csv",
    "mooncake": "mooncake_conversation.jsonl",
}
DOWNLOAD_HINT = (
    "Download them from their public sources: azure_llm_code_2023.csv is data/AzureLLMInferenceTrace_code.csv of "
    "github.com/Azure/AzurePublicDataset; mooncake_conversation.jsonl is FAST25-release/traces/"
    "conversation_trace.jsonl of github.com/kvcache-ai/Mooncake.")


def traces_dir(folder: str | Path | None = None) -> Path:
    """The traces folder: ``folder`` if given, else ``$PDLINK_TRACES_DIR``, else ``../shared/traces`` relative to
    the current directory. Raises FileNotFoundError naming :data:`TRACES_DIR_FLAG` and :data:`TRACES_DIR_ENV`
    when the chosen folder does not exist."""
    if folder is not None:
        chosen, source = Path(folder), f"given with {TRACES_DIR_FLAG}"
    elif os.environ.get(TRACES_DIR_ENV):
        chosen, source = Path(os.environ[TRACES_DIR_ENV]), f"from ${TRACES_DIR_ENV}"
    else:
        chosen, source = DEFAULT_TRACES_DIR, f"the default, {DEFAULT_TRACES_DIR} relative to the current directory"
    if not chosen.is_dir():
        raise FileNotFoundError(
            f"trace folder {os.path.abspath(chosen)} ({source}) does not exist: pass {TRACES_DIR_FLAG} DIR or set "
            f"{TRACES_DIR_ENV}=DIR to the folder holding {' and '.join(sorted(NAMED_TRACES.values()))}. "
            + DOWNLOAD_HINT)
    return chosen


def trace_path(trace: str | Path, folder: str | Path | None = None) -> Path:
    """The file of ``trace``: a name of :data:`NAMED_TRACES` (looked up in :func:`traces_dir`) or any file path.
    Raises FileNotFoundError when the file is absent."""
    if isinstance(trace, str) and trace in NAMED_TRACES:
        path = traces_dir(folder) / NAMED_TRACES[trace]
        if not path.is_file():
            raise FileNotFoundError(f"trace {trace!r}: {os.path.abspath(path)} is missing from the traces folder. "
                                    + DOWNLOAD_HINT)
        return path
    path = Path(trace)
    if not path.is_file():
        raise FileNotFoundError(f"trace {str(trace)!r} is neither a file nor one of the named traces "
                                f"{sorted(NAMED_TRACES)}")
    return path
