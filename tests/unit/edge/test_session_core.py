"""The P/D session state machine on a fake deterministic model: every interleaving of cloud tokens and
local steps must give the device-only answer (lossless hand-over), and failures must fall back."""

from __future__ import annotations

import random

import pytest

from pdlink.edge.session_core import CloudState, Compute, SessionCore, SessionState, StopCloud

VOCAB, EOS = 50, 0


def next_token(prefix: list[int], eos_after: int | None = None) -> int:
    """A deterministic 'model': the same prefix gives the same token on both sides."""
    if eos_after is not None and len(prefix) >= eos_after:
        return EOS
    return 1 + (sum((i + 1) * t for i, t in enumerate(prefix[-7:])) * 2654435761 + len(prefix)) % (VOCAB - 1)


def device_only(prompt, max_tokens, eos_after=None) -> list[int]:
    out, seq = [], list(prompt)
    while len(out) < max_tokens:
        tok = next_token(seq, eos_after)
        if tok == EOS:
            break
        out.append(tok)
        seq.append(tok)
    return out


def make(prompt, *, max_tokens=20, use_cloud=True, chunk=4, pace=0.05, device_compute=True):
    return SessionCore(prompt, max_tokens=max_tokens, stop_token_ids={EOS}, chunk_size=chunk, pace_s=pace,
                       max_gap_s=0.05, use_cloud=use_cloud, device_compute=device_compute)


def run_local_step(core: SessionCore, now: float) -> Compute | None:
    step = core.next_compute()
    if step is None:
        return None
    prefix = (core.prompt + core.answer)[: core.num_computed_tokens + len(step.token_ids)]
    core.on_computed(len(step.token_ids), next_token(prefix), now)
    return step


def simulate(prompt, cloud_tokens, *, seed, max_tokens=20, chunk=4, fail_at=None):
    """Interleave local steps and cloud arrivals at random; the cloud stops when told."""
    rng, core, now = random.Random(seed), make(prompt, max_tokens=max_tokens, chunk=chunk), 0.0
    sent, cloud_limit, stops = 0, len(cloud_tokens), []
    for _ in range(10_000):
        if core.state is SessionState.FINISHED:
            break
        now += 0.01
        for msg in core.messages_to_send():
            stops.append(msg.after_index)
            cloud_limit = min(cloud_limit, msg.after_index + 1)
        if fail_at is not None and sent == fail_at:
            core.on_cloud_failed("cloud_dropped")
            fail_at = None
        if sent < cloud_limit and rng.random() < 0.5:
            core.on_cloud_token(sent, cloud_tokens[sent], now)
            sent += 1
        elif run_local_step(core, now) is None and sent >= cloud_limit:
            core.on_cloud_ended("max_leading_tokens")
        core.release_due(now)
    else:
        pytest.fail("the session did not finish")
    core.release_due(float("inf"))
    return core, stops


@pytest.mark.parametrize("seed", range(40))
def test_pd_answer_equals_the_device_answer_for_every_interleaving(seed):
    rng = random.Random(seed)
    prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(1, 30))]
    want = device_only(prompt, 20)
    core, stops = simulate(prompt, want[: rng.randrange(1, 21)], seed=seed, chunk=rng.randrange(1, 9))
    assert core.answer == want
    assert [s.token_id for s in core.shown] == want and [s.index for s in core.shown] == list(range(len(want)))
    j = core.handover_index
    if j is not None:
        assert core.origins == ["cloud"] * j + ["device"] * (len(want) - j)
        if stops:
            assert stops[0] == j - 1  # the cloud hears the hand-over index
    assert core.finished and core.finish_reason == "length"


@pytest.mark.parametrize("seed", range(10))
def test_cloud_dropping_mid_stream_falls_back_without_loss(seed):
    prompt = [1 + i % (VOCAB - 1) for i in range(60)]  # long: the cloud fails before the device catches up
    want = device_only(prompt, 20)
    core, _ = simulate(prompt, want, seed=seed, fail_at=3, chunk=2)
    assert core.answer == want and core.fallback == "cloud_dropped"
    assert core.cloud is CloudState.FAILED


def test_device_mode_is_prefill_chunks_then_one_decode_per_token():
    prompt = list(range(1, 11))
    core, steps = make(prompt, use_cloud=False, chunk=4, max_tokens=5), []
    while (step := run_local_step(core, 1.0)) is not None:
        steps.append(step)
    assert [len(s.token_ids) for s in steps] == [4, 4, 2, 1, 1, 1, 1]
    assert [s.decode for s in steps] == [False] * 3 + [True] * 4
    assert core.answer == device_only(prompt, 5) and set(core.origins) == {"device"}
    assert core.handover_index is None and core.messages_to_send() == []


def test_device_finishing_the_prompt_first_gives_the_cloud_up():
    core = make([1, 2, 3], chunk=8)
    run_local_step(core, 0.5)
    assert core.messages_to_send() == [StopCloud(-1)]
    assert core.fallback.startswith("cloud_slow") and core.handover_index is None
    core.on_cloud_token(0, 7, 0.6)  # too late: ignored
    assert core.origins == ["device"]


def test_rejection_before_any_token_is_a_fallback():
    core = make([1, 2, 3])
    core.on_cloud_failed("rejected: overloaded")
    while run_local_step(core, 1.0):
        pass
    assert core.answer == device_only([1, 2, 3], 20) and core.fallback == "rejected: overloaded"


def test_cloud_eos_ends_the_answer_and_later_tokens_are_dropped():
    core = make(list(range(1, 40)), chunk=4)
    core.on_cloud_token(0, 5, 0.1)
    core.on_cloud_token(1, EOS, 0.2)
    assert core.state is SessionState.FINISHED and core.finish_reason == "stop" and core.answer == [5]
    assert core.next_compute() is None and core.cloud is CloudState.RELEASED
    assert core.messages_to_send() == []


def test_max_tokens_reached_by_cloud_tokens_stops_the_cloud():
    core = make(list(range(1, 40)), max_tokens=3)
    for i, tok in enumerate([5, 6, 7]):
        core.on_cloud_token(i, tok, 0.1 * (i + 1))
    assert core.finish_reason == "length" and core.messages_to_send() == [StopCloud(2)]


def test_tokens_out_of_order_are_a_protocol_failure_and_duplicates_are_ignored():
    core = make(list(range(1, 40)))
    core.on_cloud_token(0, 5, 0.1)
    core.on_cloud_token(0, 5, 0.1)
    assert core.answer == [5]
    core.on_cloud_token(2, 6, 0.2)
    assert core.cloud is CloudState.FAILED and core.fallback.startswith("cloud_protocol_error")


def test_cloud_tokens_are_shown_at_the_pace_and_the_first_at_once():
    core = make(list(range(1, 40)), pace=0.04)
    for i in range(5):
        core.on_cloud_token(i, 10 + i, 1.0)  # a burst
    shown = core.release_due(2.0)
    assert [round(s.shown_s - 1.0, 6) for s in shown] == [0.0, 0.04, 0.08, 0.12, 0.16]


def test_cloud_mode_makes_every_token_in_the_cloud():
    core = make([1, 2], device_compute=False, max_tokens=10)
    assert core.next_compute() is None
    for i in range(4):
        core.on_cloud_token(i, 10 + i, 0.1)
    core.on_cloud_ended("max_leading_tokens")
    assert core.state is SessionState.FINISHED and core.origins == ["cloud"] * 4


def test_cloud_mode_failure_ends_the_answer_with_an_error():
    core = make([1, 2], device_compute=False)
    core.on_cloud_failed("cloud_unreachable")
    assert core.finish_reason == "error" and core.fallback == "cloud_unreachable"


def test_limit_cloud_tightens_k_with_a_stop():
    core = make([1, 2, 3])
    core.limit_cloud(4)
    assert core.messages_to_send() == [StopCloud(3)]


def test_a_session_needs_tokens_and_a_side():
    with pytest.raises(ValueError):
        make([])
    with pytest.raises(ValueError):
        make([1], use_cloud=False, device_compute=False)


def test_refined_prompt_replaces_only_the_part_not_yet_computed():
    prompt = list(range(1, 41))
    core = make(prompt, chunk=8)
    run_local_step(core, 0.0)  # 8 tokens computed
    in_flight = core.next_compute()  # tokens 8..15 in flight
    kept = [0, 1, 5, 12, 20, 21, 30, 39]
    core.on_refined_prompt(kept)
    assert core.refinement["applied"] and core.refinement["kept_from_position"] == 16
    assert core.prompt == prompt[:16] + [prompt[20], prompt[21], prompt[30], prompt[39]]
    assert core.prompt_tokens == 40
    core.on_computed(len(in_flight.token_ids), 7, 0.1)
    step = core.next_compute()
    assert step.token_ids == tuple(core.prompt[16:20])
    core.on_refined_prompt([0])  # only the first refined prompt counts
    assert core.prompt[16:] == [prompt[20], prompt[21], prompt[30], prompt[39]]


def test_refined_prompt_after_the_prompt_prefill_changes_nothing():
    prompt = list(range(1, 9))
    core = make(prompt, chunk=8)
    run_local_step(core, 0.0)
    core.on_refined_prompt([0, 7])
    assert core.prompt == prompt and core.refinement == {"applied": False,
                                                         "note": "arrived after the local prefill of the prompt"}


@pytest.mark.parametrize("kept", [[3, 2], [0, 99], [-1, 4]])
def test_refined_prompt_with_bad_indices_is_ignored(kept):
    core = make(list(range(1, 21)), chunk=4)
    core.on_refined_prompt(kept)
    assert core.prompt == list(range(1, 21)) and not core.refinement["applied"]


def test_refined_session_still_finishes_with_every_token_shown_once():
    prompt = list(range(1, 41))
    core = make(prompt, chunk=4, max_tokens=12)
    cloud = device_only(prompt, 12)[:6]
    core.on_refined_prompt(list(range(0, 40, 3)) + [39])
    now, sent = 0.0, 0
    for _ in range(1000):
        if core.state is SessionState.FINISHED:
            break
        now += 0.01
        if sent < len(cloud) and core.cloud is not CloudState.RELEASED:
            core.on_cloud_token(sent, cloud[sent], now)
            sent += 1
        run_local_step(core, now)
        core.release_due(now)
    core.release_due(float("inf"))
    assert [s.index for s in core.shown] == list(range(12)) and len(core.answer) == 12
    assert core.answer[: core.handover_index] == cloud[: core.handover_index]
