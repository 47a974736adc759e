"""``pdlink generate``: one prompt, in device, pd or cloud mode, streamed or as one JSON object."""

from __future__ import annotations

import json
import sys

from pdlink.cli.errors import CLIError
from pdlink.cli.flags import add_flags
from pdlink.cli.output import marked, summary_line, timeline_title
from pdlink.cli.prompt import add_prompt_arguments, read_prompt
from pdlink.cli.session_args import add_session_arguments, build_session, sampling_from
from pdlink.edge.fallback import Fallback
from pdlink.edge.session import MODES, GenerationRequest


def add_arguments(p) -> None:
    p.add_argument("--mode", default="device", choices=MODES,
                   help="device (local only), pd (cloud first, device takes over) or cloud (the baseline)")
    add_prompt_arguments(p)
    add_flags(p, GenerationRequest, ["raw", "stop", "ignore_eos"],
              helps={"raw": "do not wrap the prompt in the chat template", "stop": "stop string (repeatable)",
                     "ignore_eos": "always make --max-tokens tokens (benchmarks)"})
    add_session_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.add_argument("--timeline", default=None, help="write the request's timeline plot (PNG) here")
    p.add_argument("--timeline-json", action="store_true", help="include the timeline events in --json output")


def run(args) -> int:
    if args.mode in ("cloud", "pd") and not args.cloud:
        raise CLIError(f"--cloud ws://HOST:PORT is required in {args.mode} mode")
    if args.mode != "cloud" and not args.package:
        raise CLIError(f"--package is required in {args.mode} mode")
    prompt = read_prompt(args)
    session = build_session(args)
    try:
        previous = None
        for tok in session.generate(prompt, mode=args.mode, max_tokens=args.max_tokens, sampling=sampling_from(args),
                                    raw=args.raw, stop=tuple(args.stop), ignore_eos=args.ignore_eos):
            if not args.json:
                print(marked(tok, args.show_origin, previous), end="", flush=True)
            previous = tok.origin
        result = session.last
    finally:
        session.close()
    if args.mode == "cloud" and result.fallback:
        raise CLIError(_cloud_failure(args.cloud, result.fallback))
    if args.timeline:
        from pdlink.edge.timeline import plot_timeline

        plot_timeline(result.timeline, args.timeline, timeline_title(result))
    if args.json:
        print(json.dumps(result.to_json(with_timeline=args.timeline_json)))
    else:
        print(result.tail_text)
        print(summary_line(result), file=sys.stderr)
    return 0


def _cloud_failure(url: str, fallback: str) -> str:
    """A cloud-mode request the cloud could not serve, said for the user."""
    if fallback.startswith(Fallback.CLOUD_UNREACHABLE.value):
        return f"cannot reach the cloud at {url}: {fallback.partition(': ')[2]}"
    return f"cloud {url}: {fallback}"
