"""The ``pdlink`` command line: one parser, one module per command, loaded only when that command runs.

``pdlink generate --help`` imports the generate module alone, so the device side's commands never load
the cloud's server, torch, transformers, the compiler or the benchmarks. Each command module has
``add_arguments(parser)`` and ``run(args) -> int``; flags of a config come from its dataclass
(``pdlink.cli.flags``), so a default or a limit is written once, in the config.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pdlink.cli.errors import CLIError

__all__ = ["CLIError", "COMMANDS", "build_parser", "main"]

# name -> (module under pdlink.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compile": ("compile", "compile a model into a package for a target"),
    "targets": ("targets", "list target presets"),
    "generate": ("generate", "generate a reply to one prompt (device, pd or cloud mode)"),
    "chat": ("chat", "terminal chat with a package (streaming, KV cache reused across turns)"),
    "profile": ("profile", "measure this device's prefill/decode speed for a package and store it"),
    "demo": ("demo", "P/D-Device demo: cloud on loopback, pd vs device under a phone profile"),
    "cloud": ("cloud", "the cloud prefill service (serve, probe)"),
    "serve": ("serve", "desktop assistant: OpenAI-compatible local server and chat page over the P/D session"),
    "bench": ("bench", "benchmarks (JSON + plots)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's module is loaded and given its arguments."""
    parser = argparse.ArgumentParser(prog="pdlink", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(f"pdlink.cli.{module}")
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors the user can fix print one line and exit with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, FileNotFoundError, KeyboardInterrupt) as exc:
        print(f"pdlink: error: {exc}", file=sys.stderr)
        return 2
