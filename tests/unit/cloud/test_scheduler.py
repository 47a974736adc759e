"""The cloud scheduler (pdlink.cloud.scheduler) over a fake backend: no model, no socket, a fake clock."""

from __future__ import annotations

import pytest

from pdlink.cloud.outputs import FinishedOutput, TokenOutput
from pdlink.cloud.request import Request, RequestStatus
from pdlink.cloud.scheduler import Scheduler, SchedulerConfig

from .fake_backend import FakeBackend, FakeClock, continuation

S = RequestStatus


def make(max_sequences=8, **cfg) -> tuple[Scheduler, FakeBackend]:
    clock = FakeClock()
    backend = FakeBackend(clock, max_sequences=max_sequences)
    cfg.setdefault("step_token_budget", 64)
    cfg.setdefault("prefill_chunk_tokens", 32)
    return Scheduler(backend, SchedulerConfig(**cfg), clock=clock), backend


def prompt(n: int, start: int = 1) -> list[int]:
    return [(start + i) % 90 + 1 for i in range(n)]


def run(sched: Scheduler, max_steps: int = 1000) -> list:
    outputs = []
    for _ in range(max_steps):
        if not sched.has_work:
            return outputs
        outputs += sched.step()
    raise AssertionError("scheduler did not drain")


def tokens_of(outputs, key) -> list[int]:
    toks = [o for o in outputs if isinstance(o, TokenOutput) and o.key == key]
    assert [t.index for t in toks] == list(range(len(toks))), "indices must be 0, 1, 2, ... with no gap"
    return [t.token_id for t in toks]


def finished(outputs, key) -> FinishedOutput:
    (fin,) = [o for o in outputs if isinstance(o, FinishedOutput) and o.key == key]
    return fin


def test_single_request_streams_the_greedy_continuation_and_frees_its_sequence():
    sched, backend = make()
    req = Request("a", prompt(10), max_tokens=5)
    sched.add(req)
    out = run(sched)
    assert tokens_of(out, "a") == continuation(prompt(10), 5)
    assert finished(out, "a").status is S.FINISHED_LENGTH and req.status.done_reason == "max_leading_tokens"
    assert backend.num_sequences == 0 and sched.num_live == 0
    assert req.num_computed_tokens == 10 + 4  # the last token is sampled, never fed back


def test_decodes_of_all_live_requests_share_one_batched_call():
    sched, backend = make()
    for key in "abc":
        sched.add(Request(key, prompt(5, start=ord(key)), max_tokens=4))
    out = run(sched)
    assert len(backend.prefill_calls[0]) == 3  # all three prompts fit the first step
    assert backend.decode_calls[:3] == [[1, 2, 3]] * 3
    for key in "abc":
        assert tokens_of(out, key) == continuation(prompt(5, start=ord(key)), 4)


def test_long_prompt_is_chunked_and_cannot_starve_a_short_one():
    sched, backend = make(step_token_budget=64, prefill_chunk_tokens=32)
    sched.add(Request("long", prompt(1000), max_tokens=2))
    sched.add(Request("short", prompt(8, start=50), max_tokens=2))
    first = sched.step()
    assert backend.prefill_calls[0] == {1: 32, 2: 8}  # the long one gets one chunk, the short one all of it
    assert [o.key for o in first if isinstance(o, TokenOutput)] == ["short"]  # TTFT of one step
    out = first + run(sched)
    assert tokens_of(out, "long") == continuation(prompt(1000), 2)
    assert all(max(call.values()) <= 32 and sum(call.values()) <= 64 for call in backend.prefill_calls)


def test_round_robin_serves_every_waiting_prompt():
    sched, backend = make(step_token_budget=32, prefill_chunk_tokens=16)
    for i in range(4):
        sched.add(Request(i, prompt(200, start=i), max_tokens=1))
    last_served = {i: -1 for i in range(4)}
    for step in range(12):
        sched.step()
        for seq_id in backend.prefill_calls[-1]:
            last_served[seq_id - 1] = step
        assert all(step - s <= 2 for s in last_served.values()), "a prompt waited more than two steps"


def test_decoding_goes_on_while_a_long_prompt_prefills():
    sched, backend = make(step_token_budget=32, prefill_chunk_tokens=32)
    sched.add(Request("chat", prompt(4), max_tokens=10))
    sched.step()
    sched.add(Request("doc", prompt(320, start=9), max_tokens=1))
    counts = []
    for _ in range(5):
        out = sched.step()
        counts.append(sum(1 for o in out if isinstance(o, TokenOutput) and o.key == "chat"))
    assert counts == [1] * 5  # one leading token per step, every step


def test_k_limit_and_eos_end_a_request():
    sched, _ = make()
    p = prompt(6)
    ref = continuation(p, 6)
    sched.add(Request("k", p, max_tokens=3))
    sched.add(Request("eos", p, max_tokens=6, stop_token_ids=[ref[1]]))
    out = run(sched)
    assert tokens_of(out, "k") == ref[:3] and finished(out, "k").status is S.FINISHED_LENGTH
    assert tokens_of(out, "eos") == ref[:2] and finished(out, "eos").status is S.FINISHED_EOS


def test_stop_after_index_frees_at_once_and_no_later_token_comes():
    sched, backend = make()
    req = Request("s", prompt(6), max_tokens=20)
    sched.add(req)
    out = sched.step() + sched.step() + sched.step()  # tokens 0, 1, 2
    assert sched.stop("s", 1) is req and req.status is S.FINISHED_STOPPED
    sched.schedule()  # the worker's next step boundary frees the sequence
    assert backend.num_sequences == 0 and not sched.has_work
    assert len(tokens_of(out, "s")) == 3 and req.num_output_tokens == 3


def test_stop_ahead_of_the_stream_still_delivers_tokens_up_to_it():
    sched, _ = make()
    req = Request("s", prompt(6), max_tokens=20)
    sched.add(req)
    sched.stop("s", 2)  # the device already knows it needs only 0..2
    out = run(sched)
    assert tokens_of(out, "s") == continuation(prompt(6), 3)
    assert finished(out, "s").status is S.FINISHED_STOPPED


@pytest.mark.parametrize("steps_before", [0, 1, 3])
@pytest.mark.parametrize("disconnected", [False, True])
def test_cancel_or_disconnect_frees_the_request_in_any_state(steps_before, disconnected):
    sched, backend = make(prefill_chunk_tokens=16, step_token_budget=16)
    other = Request("other", prompt(8, start=3), max_tokens=8)
    sched.add(Request("x", prompt(40), max_tokens=8))
    sched.add(other)
    before = [o for _ in range(steps_before) for o in sched.step()]
    req = sched.cancel("x", disconnected=disconnected)
    assert req.status is (S.FINISHED_DISCONNECTED if disconnected else S.FINISHED_CANCELLED)
    assert sched.get("x") is None and sched.cancel("x") is None  # a second cancel is a no-op
    out = run(sched)
    assert not [o for o in out if o.key == "x"]
    out = before + out
    assert tokens_of(out, "other") == continuation(prompt(8, start=3), 8)
    assert backend.num_sequences == 0


def test_cancel_while_the_step_computes_drops_its_outputs():
    sched, backend = make()
    sched.add(Request("a", prompt(5), max_tokens=4))
    sched.add(Request("b", prompt(5, start=7), max_tokens=4))
    plan = sched.schedule()
    result = sched.execute(plan)  # a server runs this without its lock ...
    sched.cancel("a")  # ... so a cancel can land here
    out = sched.update(plan, result)
    assert [o.key for o in out] == ["b"]
    assert list(backend.seqs) == [2]  # "a" was freed by update itself


def test_requests_wait_for_a_free_sequence():
    sched, backend = make(max_sequences=2)
    for key in "abc":
        sched.add(Request(key, prompt(4, start=ord(key)), max_tokens=3))
    sched.step()
    assert sched.get("c").status is S.WAITING and backend.num_sequences == 2
    out = run(sched)
    assert tokens_of(out, "c") == continuation(prompt(4, start=ord("c")), 3)


def test_backend_failure_ends_only_the_requests_of_that_step():
    sched, backend = make(step_token_budget=8, prefill_chunk_tokens=8)
    sched.add(Request("a", prompt(8), max_tokens=2))
    sched.step()
    sched.add(Request("b", prompt(8, start=5), max_tokens=2))
    backend.fail_next = True
    out = sched.step()
    statuses = {o.key: o.status for o in out if isinstance(o, FinishedOutput)}
    assert statuses == {"a": S.FINISHED_ERROR, "b": S.FINISHED_ERROR}
    assert backend.num_sequences == 0 and not sched.has_work


def test_admission_estimates_from_measured_speed_and_queued_work():
    sched, backend = make(step_token_budget=64, prefill_chunk_tokens=64, ttft_budget_s=1.0, max_requests=3,
                          initial_prefill_tok_s=100.0)
    assert sched.estimate_ttft(50) == pytest.approx(0.5)  # before any step: the configured speed
    sched.add(Request("warm", prompt(64), max_tokens=1))
    sched.step()
    assert sched.stats().prefill_tok_s == pytest.approx(1000.0)  # 64 tokens in 64 fake ms
    assert sched.can_accept(500) == (True, pytest.approx(0.5))
    sched.add(Request("a", prompt(300), max_tokens=1))
    sched.add(Request("b", prompt(100), max_tokens=1))
    # round-robin in 64-token chunks: a 200-token newcomer needs 4 turns, in which "a" reads 256 of its
    # 300 tokens and "b" all of its 100
    assert sched.estimate_ttft(200) == pytest.approx((200 + 256 + 100) / 1000)
    assert sched.estimate_ttft(10) == pytest.approx((10 + 64 + 64) / 1000)  # one turn: a chunk of each
    ok, estimate = sched.can_accept(900)
    assert not ok and estimate > 1.0  # over the TTFT budget
    sched.add(Request("c", prompt(1), max_tokens=1))
    assert sched.can_accept(1)[0] is False  # max_requests live
    run(sched)
    assert sched.can_accept(1)[0] is True


def test_admit_queues_an_accepted_request_and_says_why_it_refuses_one():
    sched, backend = make(step_token_budget=64, prefill_chunk_tokens=64, ttft_budget_s=1.0, max_requests=2,
                          initial_prefill_tok_s=100.0)
    first = sched.admit(Request("a", prompt(10), max_tokens=1))
    assert first.accepted and first.queue_position == 0 and first.estimated_ttft_s == pytest.approx(0.1)
    assert sched.admit(Request("b", prompt(10), max_tokens=1)).queue_position == 1
    slow = sched.admit(Request("c", prompt(10), max_tokens=1))  # max_requests are live
    assert not slow.accepted and slow.retry_after_s == 1.0 and "limit of 2 requests" in slow.message
    run(sched)
    late = sched.admit(Request("d", prompt(1500), max_tokens=1))  # 1.5 s at the measured 1000 tokens/s
    assert not late.accepted and "over the budget" in late.message
    assert late.retry_after_s == pytest.approx(late.estimated_ttft_s - 1.0, abs=1e-3)
    assert sched.get("c") is None and sched.get("d") is None and sched.stats().requests_live == 0


def test_admission_counts_decode_steps_and_speed_follows_a_moving_average():
    sched, backend = make(step_token_budget=32, prefill_chunk_tokens=32, ema_alpha=0.5)
    sched.add(Request("chat", prompt(32), max_tokens=50))
    sched.step()
    sched.step()
    assert sched.stats().decode_step_s == pytest.approx(0.02)
    assert sched.estimate_ttft(64) == pytest.approx(64 / 1000 + 2 * 0.02)
    backend.prefill_s_per_token = 0.003  # the backend slows down
    sched.add(Request("doc", prompt(32, start=4), max_tokens=1))
    sched.step()
    measured = 32 / (32 * 0.003)
    assert sched.stats().prefill_tok_s == pytest.approx(0.5 * 1000 + 0.5 * measured)


def test_request_status_transitions_are_checked_and_ordered():
    req = Request("r", [1, 2], max_tokens=2)
    assert not req.status.finished and S.FINISHED_EOS.finished and S.DECODING < S.FINISHED_EOS
    with pytest.raises(RuntimeError):
        req._move(S.DECODING)  # WAITING -> DECODING skips the prefill
    req._move(S.PREFILLING)
    req._move(S.FINISHED_LENGTH)
    with pytest.raises(RuntimeError):
        req._move(S.PREFILLING)
    assert isinstance(req.output_token_ids, tuple) and isinstance(req.prompt_token_ids, tuple)


def test_add_refuses_duplicates_and_requests_beyond_the_context_window():
    sched, backend = make()
    sched.add(Request("a", prompt(4), max_tokens=2))
    with pytest.raises(ValueError, match="already live"):
        sched.add(Request("a", prompt(4), max_tokens=2))
    with pytest.raises(ValueError, match="context window"):
        sched.add(Request("big", prompt(backend.context_window), max_tokens=1))
    with pytest.raises(ValueError):
        Request("empty", [], max_tokens=1)
    with pytest.raises(ValueError):
        SchedulerConfig(step_token_budget=16, prefill_chunk_tokens=32)


def test_decode_stall_bound_keeps_streams_flowing_under_a_long_prompt():
    # the fake backend prefills 1000 tok/s (1 ms a token): 0.02 s of stall = 20 prompt tokens per step
    sched, _ = make(step_token_budget=512, prefill_chunk_tokens=512, decode_stall_s=0.02, initial_prefill_tok_s=1000)
    sched.add(Request("streaming", prompt(8), 40))
    sched.step()  # its prefill; it decodes from now on
    sched.add(Request("long", prompt(400, start=7), 2))
    chunks = []
    for _ in range(5):
        plan = sched.schedule()
        chunks.append(sum(b - a for _, a, b in plan.prefill))
        sched.update(plan, sched.execute(plan))
    assert all(16 <= c <= 20 for c in chunks), chunks  # not one 400-token step while "streaming" waits
    unbounded, _ = make(step_token_budget=512, prefill_chunk_tokens=512)
    unbounded.add(Request("streaming", prompt(8), 40))
    unbounded.step()
    unbounded.add(Request("long", prompt(400, start=7), 2))
    assert sum(b - a for _, a, b in unbounded.schedule().prefill) == 400
    with pytest.raises(ValueError, match="decode_stall_s"):
        SchedulerConfig(decode_stall_s=-1)
