"""Prompt refinement in ``pdlink bench session``: what it buys (an earlier hand-over, less cloud time) and
what it costs (answer fidelity), on real text under the same emulation as the rest of the benchmark.

- speed: pd with and without refinement, settings chosen by the closed form, a longer answer (end of
  turn ignored) so the hand-over can happen at all on a phone-class device;
- fidelity: several prompts with the cloud limited to ``FIDELITY_K`` tokens, so in both runs the device
  writes the rest of the (naturally ending) answer: the agreement of its continuation isolates what
  dropping prompt tokens changed;
- retrieval: a fact planted mid-document and asked for at the end, the cloud giving one token only:
  does the device still answer it from the refined prompt, and did the scores keep the fact's tokens?
"""

from __future__ import annotations

from pathlib import Path

LENGTH = 1024
KEEP_RATIO = 0.5
SPEED_TOKENS = 384
FIDELITY_K, FIDELITY_TOKENS, FIDELITY_PROMPTS = 4, 128, 4
RETRIEVAL_TOKENS = 24


def measure_refinement(session, out: Path) -> dict:
    """Run the three comparisons on ``session`` (a pd-capable session on a refining cloud); returns the report."""
    from pdlink.common.real_text import build_prompt
    from pdlink.edge.timeline import plot_timeline

    ids = build_prompt(session.tokenizer, LENGTH)
    speed = {name: _run(session, ids, refine, SPEED_TOKENS) for name, refine in (("full", "off"), ("refined", "on"))}
    plot_timeline(session.last.timeline, out / f"session-timeline-refined-{LENGTH}.png",
                  f"pd with prompt refinement (keep {KEEP_RATIO:.0%}), {len(ids)} prompt tokens: hand-over "
                  f"{speed['refined']['handover_index']}, cloud busy {speed['refined']['cloud_busy_s']} s")
    return {
        "prompt_tokens": len(ids), "keep_ratio": KEEP_RATIO,
        "speed": {**speed, "cloud_busy_ratio_refined_vs_full": _ratio(speed, "cloud_busy_s"),
                  "note": f"settings by the closed form, {SPEED_TOKENS}-token answers"},
        "fidelity": _fidelity(session),
        "retrieval": _retrieval(session),
    }


def _run(session, ids, refine: str, max_tokens: int, k: int | None = None, mode: str = "pd",
         ignore_eos: bool = True) -> dict:
    list(session.generate(ids, mode=mode, max_tokens=max_tokens, k=k, refine=refine if mode == "pd" else None,
                          ignore_eos=ignore_eos))
    r = session.last
    j = r.to_json()
    print(f"  refinement {mode:6s} refine={refine:3s} k={k} ttft {r.ttft_s:6.2f} s  handover {r.handover_index}"
          f"  cloud busy {r.cloud_busy_s}  fallback {r.fallback}  refined {j['refinement']}", flush=True)
    return {"ttft_s": r.ttft_s, "handover_index": r.handover_index, "handover_s": r.timeline.handover_s,
            "cloud_busy_s": r.cloud_busy_s, "max_gap_s": r.max_gap_s, "e2e_s": r.e2e_s, "fallback": r.fallback,
            "k": j["settings"]["k"],
            "refinement": j["refinement"], "token_ids": r.token_ids, "text": r.text}


def _fidelity(session) -> dict:
    """Full vs refined prompt on ``FIDELITY_PROMPTS`` prompts: how much of the device's continuation agrees."""
    from pdlink.common.real_text import build_prompt

    per_prompt = []
    for n in range(FIDELITY_PROMPTS):
        ids = build_prompt(session.tokenizer, LENGTH, skip_tokens=n * LENGTH)
        runs = {name: _run(session, ids, refine, FIDELITY_TOKENS, k=FIDELITY_K, ignore_eos=False)
                for name, refine in (("full", "off"), ("refined", "on"))}
        per_prompt.append({**agreement(runs["full"]["token_ids"], runs["refined"]["token_ids"], FIDELITY_K),
                           "handover_s": {name: r["handover_s"] for name, r in runs.items()},
                           "texts": {name: r["text"] for name, r in runs.items()}})
    shares = [p["equal_token_share"] for p in per_prompt if p["equal_token_share"] is not None]
    return {"prompts": per_prompt, "mean_equal_token_share": sum(shares) / len(shares) if shares else None,
            "identical_answers": sum(p["common_prefix_tokens"] == max(p["compared_tokens"]) for p in per_prompt),
            "note": f"the cloud gives {FIDELITY_K} tokens in both runs, then the device answers (to its end of "
                    "turn) from the full or the refined prompt"}


def _ratio(runs: dict, key: str) -> float | None:
    full, refined = runs["full"][key], runs["refined"][key]
    return refined / full if full and refined is not None else None


def agreement(a: list[int], b: list[int], start: int = 0) -> dict:
    """How far two answers agree from token ``start`` on: the common run, and the share of positions (of
    the longer answer) holding the same token."""
    a, b = a[start:], b[start:]
    n = min(len(a), len(b))
    common = next((i for i in range(n) if a[i] != b[i]), n)
    longest = max(len(a), len(b))
    return {"compared_from_index": start, "compared_tokens": [len(a), len(b)], "common_prefix_tokens": common,
            "equal_token_share": sum(x == y for x, y in zip(a, b)) / longest if longest else None}


def _retrieval(session) -> dict:
    from pdlink.common.real_text import PLANTED_ANSWER, PLANTED_FACT, fact_positions, planted_fact_text
    from pdlink.cloud.refinement import kept_fraction_of

    ids = session.encode(planted_fact_text(4 * LENGTH))
    runs = {"device": _run(session, ids, "off", RETRIEVAL_TOKENS, mode="device", ignore_eos=False),
            "pd_full": _run(session, ids, "off", RETRIEVAL_TOKENS, k=1, ignore_eos=False),
            "pd_refined": _run(session, ids, "on", RETRIEVAL_TOKENS, k=1, ignore_eos=False)}
    kept = session.last.kept_indices
    fact = fact_positions(ids, session.tokenizer.encode(" " + PLANTED_FACT))
    return {"prompt_tokens": len(ids), "fact_positions": [fact.start, fact.stop], "answer": PLANTED_ANSWER,
            "fact_tokens_kept": kept_fraction_of(kept, fact) if kept else None,
            **{f"{name}_answers_it": PLANTED_ANSWER in r["text"] for name, r in runs.items()},
            "texts": {name: r["text"] for name, r in runs.items()},
            "note": "the cloud gives 1 token; the device answers from the full or the refined prompt"}
