"""Where a prompt comes from: ``--prompt`` or ``--prompt-file`` (read once, here)."""

from __future__ import annotations

from pathlib import Path

from pdlink.cli.errors import CLIError


def add_prompt_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="file holding the prompt text")


def read_prompt(args) -> str:
    """The prompt text; a missing file is a ``CLIError``."""
    if args.prompt is not None:
        return args.prompt
    path = Path(args.prompt_file)
    if not path.is_file():
        raise CLIError(f"prompt file {args.prompt_file!r} does not exist")
    return path.read_text()
