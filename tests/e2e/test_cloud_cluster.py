"""The disaggregated cloud end to end: ``pdlink cloud serve --cluster local`` (a local Ray runtime, a gateway,
2 prefill + 2 decode instances, SmolLM2 on torch) on loopback.

The protocol v1 bad-input cases of ``test_cloud_server.py`` run against the gateway unchanged (imported
below, with this module's ``server``). Then 20 concurrent devices get the single server's greedy tokens
while a prefill instance is killed, and requests survive a decode instance dying while their KV arrives.
The kills come last: they leave one instance of each role.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from pdlink.cloud.server_process import ServerProcess
from tests.e2e.test_cloud_server import (  # noqa: F401  (fixtures and the bad-input cases, run here too)
    MAX_BYTES, MAX_K, MAX_LIVE, MAX_PROMPT, PER_CONN, QUESTIONS, TOKEN, arun, connect, ref, tokenizer_hash,
    test_bad_frames_get_clear_errors_and_the_connection_survives, test_client_library_reports_refusals,
    test_flood_beyond_the_limits_is_rejected_and_others_are_unaffected, test_handshake_failures_are_fatal_and_explained,
    test_handshake_rules_for_the_first_frame, test_huge_frame_closes_only_that_connection, wait_idle,
)

pytestmark = pytest.mark.e2e

MORE_QUESTIONS = ["Name a famous painter.", "What is rain?", "Why do birds sing?", "What is a prime number?"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "token").write_text(TOKEN + "\n")
    proc = ServerProcess(
        "--cluster", "local", "--prefill", "2", "--decode", "2", "--model", "smollm2-135m",
        "--instance-threads", "1", "--instance-cpus", "0.25", "--prefill-slots", "12", "--decode-slots", "16",
        "--auth-token-file", str(folder / "token"), "--max-prompt-tokens", str(MAX_PROMPT),
        "--max-leading-tokens", str(MAX_K), "--max-concurrent-requests", str(MAX_LIVE),
        "--max-requests-per-connection", str(PER_CONN), "--max-message-bytes", str(MAX_BYTES), "--ttft-budget-s", "8",
        "--step-token-budget", "256", "--prefill-chunk-tokens", "128", "--handshake-timeout-s", "3",
        log_path=folder / "gateway.log")
    proc.token_file = folder / "token"
    try:
        proc.wait_ready(timeout_s=600)
        proc.tokenizer_hash = proc.health()["tokenizer_hash"]
        yield proc
    finally:
        proc.stop(timeout_s=60)


def instances(server, role: str) -> dict[str, dict]:
    return {n: s for n, s in server.health()["instances"].items() if s["role"] == role and s["alive"]}


async def kill_when_busy(server, role: str, name: str | None = None) -> str:
    """SIGKILL an instance of ``role`` (``name``, else the first) once the gateway has requests open on it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        live = await asyncio.to_thread(instances, server, role)
        busy = [n for n, s in sorted(live.items()) if s["open"] > 0 and name in (None, n)]
        if busy:
            os.kill(live[busy[0]]["pid"], signal.SIGKILL)
            return busy[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {role} instance got a request within 120 s")


async def device(server, ids: list[int], k: int):
    async with await connect(server) as client:
        return await (await client.prefill(prompt_token_ids=ids, max_leading_tokens=k)).collect()


def test_cluster_health_lists_two_prefill_and_two_decode_instances(server):
    health = server.health()
    assert health["status"] == "ok" and health["router"] == "on_demand" and health["backend"] == "torch"
    assert len(instances(server, "prefill")) == 2 and len(instances(server, "decode")) == 2
    status, body = server.http("/metrics")
    assert status == 200 and "pdlink_cluster_offers_total" in body and "pdlink_cluster_instance_alive" in body


def test_twenty_devices_get_greedy_tokens_while_a_prefill_instance_is_killed(server, ref):
    prompts = [ref.ids(q) for q in QUESTIONS + MORE_QUESTIONS]
    failovers = server.metric("pdlink_cluster_failovers_total", group="default", role="prefill")

    async def go():
        tasks = [asyncio.create_task(device(server, ids, 8)) for ids in prompts]
        victim = await kill_when_busy(server, "prefill")  # while it holds requests in prefill
        return victim, await asyncio.gather(*tasks)

    victim_name, streams = arun(go(), timeout_s=400)
    for ids, stream in zip(prompts, streams):  # nobody lost a request, and every answer is the greedy one
        assert stream.rejected is None and stream.done.reason == "max_leading_tokens", (stream.rejected, stream.done)
        assert [t.token_id for t in stream.tokens] == ref.greedy(ids, 8)
    deadline = time.monotonic() + 30
    while victim_name in instances(server, "prefill") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victim_name not in instances(server, "prefill")
    assert server.metric("pdlink_cluster_failovers_total", group="default", role="prefill") > failovers
    wait_idle(server, timeout_s=60)


def test_a_decode_instance_dying_mid_transfer_falls_back_to_another(server, ref):
    prompts = [ref.ids(q) for q in QUESTIONS[:6]]
    decoders = instances(server, "decode")
    assert len(decoders) == 2
    failovers = server.metric("pdlink_cluster_failovers_total", group="default", role="decode")

    async def go():
        tasks = [asyncio.create_task(device(server, ids, 24)) for ids in prompts]
        await kill_when_busy(server, "decode")  # as soon as a request's first token and KV reach it
        return await asyncio.gather(*tasks)

    streams = arun(go(), timeout_s=400)
    for ids, stream in zip(prompts, streams):  # the other instance re-prefilled and went on: same tokens
        assert stream.done.reason == "max_leading_tokens", stream.done
        assert [t.token_id for t in stream.tokens] == ref.greedy(ids, 24)
        assert [t.index for t in stream.tokens] == list(range(24))
    assert len(instances(server, "decode")) == 1
    assert server.metric("pdlink_cluster_failovers_total", group="default", role="decode") > failovers
    wait_idle(server, timeout_s=60)
