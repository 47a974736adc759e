"""One engine measured in its own process (so peak RSS is its own): ``python -m pdlink.bench.engine_worker``.

Prints one JSON object: prefill tok/s per prompt length, decode tok/s, peak RSS (MiB), and for
pdlink packages a per-kernel profile of one decode step and one prefill.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from pdlink.common.real_text import prompt_of_length


def _rss_mib() -> float:
    """Peak resident set of this process (VmHWM). ``ru_maxrss`` would carry over the parent's peak
    across fork+exec, so it is only the fallback."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _context(args) -> int:
    """Tokens one sequence of the run needs: the longest prompt and the profiled decode step after it, or
    the decode prompt plus its tokens."""
    return max(max(args.lengths) + 1, args.lengths[0] + args.decode_tokens + 1)


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: first calls allocate workspaces and page weights in
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _summary(lengths_to_times: dict[int, list[float]]) -> dict:
    return {
        str(n): {"median_tok_s": n / statistics.median(ts), "best_tok_s": n / min(ts), "times_s": ts}
        for n, ts in lengths_to_times.items()
    }


class PdlinkRunner:
    def __init__(self, args):
        from pdlink.edge.engine import Engine, EngineConfig

        self.engine = Engine(
            EngineConfig(package=args.package, num_threads=args.threads, context_window=_context(args), max_num_sequences=1)
        )
        self.encode = self.engine.tokenizer.encode

    def prefill(self, ids):
        seq = self.engine.add_sequence()
        self.engine.prefill(seq, ids)
        self.engine.remove_sequence(seq)

    def decode(self, ids, n) -> float:
        e = self.engine
        seq = e.add_sequence()
        token = int(e.prefill(seq, ids).argmax())
        t = time.perf_counter()
        for _ in range(n):
            token = int(e.decode(seq, token).argmax())
        elapsed = time.perf_counter() - t
        e.remove_sequence(seq)
        return elapsed

    def profile(self, ids) -> dict:
        from pdlink.bench.profiler import profile_engine

        return profile_engine(self.engine, ids)


class LlamaCppRunner:
    def __init__(self, args):
        from llama_cpp import Llama

        self.llm = Llama(model_path=args.gguf, n_ctx=_context(args), n_batch=max(args.lengths), n_threads=args.threads,
                         n_threads_batch=args.threads, verbose=False)
        self.encode = lambda text: self.llm.tokenize(text.encode(), add_bos=False, special=False)

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids)

    def decode(self, ids, n) -> float:
        self.llm.reset()
        times = []
        for token in self.llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == n + 1:
                break
        return times[-1] - times[0]


class TransformersRunner:
    def __init__(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from pathlib import Path

        torch.set_num_threads(args.threads)
        gguf = Path(args.gguf)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        self.torch = torch
        self.encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]

    def prefill(self, ids):
        with self.torch.no_grad():
            self.model(input_ids=self.torch.tensor([ids]), use_cache=True)

    def decode(self, ids, n) -> float:
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            t = time.perf_counter()
            for _ in range(n):
                token = out.logits[0, -1].argmax().reshape(1, 1)
                out = self.model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            return time.perf_counter() - t


RUNNERS = {"pdlink": PdlinkRunner, "llama.cpp": LlamaCppRunner, "transformers": TransformersRunner}


def run(args) -> dict:
    baseline = _rss_mib()
    runner = RUNNERS[args.engine](args)
    loaded = _rss_mib()
    prompts = {n: prompt_of_length(runner.encode, n) for n in args.lengths}
    prefill = {n: _timed(lambda ids=ids: runner.prefill(ids), args.repeats) for n, ids in prompts.items()}
    decode_times = [runner.decode(prompts[args.lengths[0]], args.decode_tokens) for _ in range(args.repeats)]
    result = {
        "engine": args.engine,
        "threads": args.threads,
        "prefill": _summary(prefill),
        "decode": {
            "tokens": args.decode_tokens,
            "context": args.lengths[0],
            "median_tok_s": args.decode_tokens / statistics.median(decode_times),
            "best_tok_s": args.decode_tokens / min(decode_times),
            "times_s": decode_times,
        },
        "rss_mib": {"process_start": baseline, "after_load": loaded, "peak": _rss_mib()},
        "kv_context_tokens": _context(args),
    }
    if hasattr(runner, "profile"):
        result["profile"] = runner.profile(prompts[512 if 512 in prompts else args.lengths[0]])
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True, choices=list(RUNNERS))
    p.add_argument("--package")
    p.add_argument("--gguf")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048])
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
