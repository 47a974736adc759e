"""``pdlink chat``: a terminal conversation; with ``--cloud`` every turn runs in pd mode. The device's KV
cache of earlier turns is reused either way."""

from __future__ import annotations

import sys

from pdlink.cli.errors import CLIError
from pdlink.cli.output import marked, summary_line
from pdlink.cli.session_args import add_session_arguments, build_session, sampling_from
from pdlink.edge.chat import Conversation, user_lines


def add_arguments(p) -> None:
    p.add_argument("--system", default=None, help="system prompt")
    add_session_arguments(p, defaults={"max_tokens": 256, "temperature": 0.7, "top_p": 0.9})


def run(args) -> int:
    if not args.package:
        raise CLIError("--package is required for chat")
    mode = "pd" if args.cloud else "device"
    session = build_session(args)
    chat = Conversation(session, args.system)
    print(f"pdlink chat ({mode} mode) -- empty line or Ctrl-D to quit", file=sys.stderr)
    try:
        for line in user_lines():
            previous = None
            for tok in chat.ask(line, mode=mode, max_tokens=args.max_tokens, sampling=sampling_from(args)):
                print(marked(tok, args.show_origin, previous), end="", flush=True)
                previous = tok.origin
            print(chat.last.tail_text)
            if args.cloud:
                print(summary_line(chat.last), file=sys.stderr)
    finally:
        chat.close()
        session.close()
    return 0
