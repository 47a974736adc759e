"""The P/D-Device session end to end: the real cloud server (the same compiled package) on loopback, the
real engine on the device side, emulated device speeds and networks. Every wait is bounded.

The oracle is device mode: with greedy sampling the shown pd answer must equal it token for token.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import pytest

from pdlink.common.real_text import real_text
from pdlink.cloud.server_process import ServerProcess, free_port
from pdlink.edge.cloud_link import CloudTarget
from pdlink.edge.device_profile import DeviceProfile
from pdlink.edge.emulation import NetworkEmulation
from pdlink.edge.session import Session, SessionConfig

pytestmark = pytest.mark.e2e

MAX_TOKENS = 40
# Between this machine's engine and a phone: slow enough that the cloud's first token comes first.
TEST_DEVICE = DeviceProfile(name="test-device", prefill_tok_s=80.0, decode_s_per_token=0.03,
                            source="test profile (slower than this machine's engine)")


def prompts() -> list[str]:
    """Ten prompts of about 200 to 1500 tokens of real text (Python's reference topics)."""
    text = real_text(60_000)
    sizes = [900, 1300, 1800, 2400, 3000, 3600, 4200, 4800, 5400, 6000]
    return [f"Summarize this text.\n\n{text[i * 5000: i * 5000 + n]}" for i, n in enumerate(sizes)]


def serve_model(model: str, log_path):
    """A module-scoped server for ``model`` (1 thread, 2k prompts, k up to 256): yields the running process."""
    with ServerProcess("--model", model, "--threads", "1", "--max-leading-tokens", "256",
                       "--max-prompt-tokens", "2048", "--ttft-budget-s", "60", log_path=log_path) as proc:
        proc.wait_ready(timeout_s=240)
        yield proc


@pytest.fixture(scope="module")
def server(q4_1_package, tmp_path_factory):
    yield from serve_model(str(q4_1_package), tmp_path_factory.mktemp("pd") / "server.log")


def make_session(package, url: str | None, profile=TEST_DEVICE, network=NetworkEmulation(), **cfg) -> Session:
    cloud = CloudTarget(url, event_timeout_s=20.0, open_timeout_s=5.0) if url else None
    return Session(SessionConfig(package=str(package), cloud=cloud, device_profile=profile, network=network,
                                 threads=1, done_wait_s=5.0, **cfg))


@pytest.fixture(scope="module")
def references(q4_1_package):
    """Device-mode answers (this machine's speed; emulation only adds waits)."""
    session = make_session(q4_1_package, None, profile=None)
    try:
        out = {}
        for p in prompts():
            list(session.generate(p, mode="device", max_tokens=MAX_TOKENS))
            out[p] = session.last
        return out
    finally:
        session.close()


SLOWER_DEVICE = DeviceProfile(name="test-device-slower", prefill_tok_s=60.0, decode_s_per_token=0.04,
                              prefill_halving_tokens=4000, source="test profile")
EMULATIONS = [(NetworkEmulation(), TEST_DEVICE), (NetworkEmulation(rtt_ms=60, jitter_ms=20, seed=1), SLOWER_DEVICE),
              (NetworkEmulation(rtt_ms=150, bandwidth_mbps=5, seed=2), TEST_DEVICE)]


def test_pd_hand_over_is_lossless_on_ten_prompts(server, q4_1_package, references):
    url, handovers, stopped = server.url, 0, 0
    for n, (network, profile) in enumerate(EMULATIONS):
        session = make_session(q4_1_package, url, profile=profile, network=network)
        try:
            for i, prompt in enumerate(prompts()):
                if i % len(EMULATIONS) != n:
                    continue
                ref = references[prompt]
                assert 200 <= ref.prompt_tokens <= 1500
                shown = [t.token_id for t in session.generate(prompt, mode="pd", max_tokens=MAX_TOKENS, k=24)]
                r = session.last
                assert shown == r.token_ids == ref.token_ids, (i, r.fallback, r.handover_index)
                assert r.text == ref.text
                assert r.fallback is None or r.fallback.startswith("cloud_slow"), r.fallback
                j = r.handover_index
                if j is not None:
                    handovers += 1
                    assert r.origins == ["cloud"] * j + ["device"] * (len(r.origins) - j)
                    done = r.cloud_done
                    if done["reason"] == "stopped":
                        stopped += 1
                        assert done["stop_after_index"] == j - 1  # the cloud stopped at the hand-over index
                    else:
                        assert done["reason"] == "max_leading_tokens" and done["tokens_sent"] == j
        finally:
            session.close()
    assert handovers >= 5, "the device should take over on most prompts"


HALF_SPEED_DEVICE = DeviceProfile(name="test-device-half", prefill_tok_s=40.0, decode_s_per_token=0.03,
                                  source="test profile")


def test_the_cloud_hears_stop_at_the_hand_over(q4_1_package, tmp_path):
    """k = the whole answer from a cloud held to 0.4 s a step (an emulated busy cloud, ``--min-step-s``):
    the device catches up while the cloud still streams, takes over and sends stop; the cloud reports the
    stop index it honoured. Both sides are emulated with wide margins: the device's prefill (about 11 s)
    is several times the cloud's first token and a third of the cloud's whole answer (about 30 s)."""
    prompt, n = prompts()[2], 120
    with ServerProcess("--model", str(q4_1_package), "--threads", "1", "--max-leading-tokens", "256",
                       "--max-prompt-tokens", "2048", "--ttft-budget-s", "60", "--min-step-s", "0.4",
                       log_path=tmp_path / "slow-cloud.log") as proc:
        url = proc.wait_ready(timeout_s=240)
        session = make_session(q4_1_package, url, profile=HALF_SPEED_DEVICE)
        try:
            want = [t.token_id for t in session.generate(prompt, mode="device", max_tokens=n)]
            shown = [t.token_id for t in session.generate(prompt, mode="pd", max_tokens=n, k=n)]
        finally:
            session.close()
    r = session.last
    assert shown == want
    j, done = r.handover_index, r.cloud_done
    assert j is not None and 0 < j < len(shown), (j, r.fallback, done)
    assert done["reason"] == "stopped" and done["stop_after_index"] == j - 1 and done["cloud_busy_s"] > 0
    assert done["tokens_sent"] >= j and r.timeline.stop_sent_s is not None


@pytest.mark.parametrize("case", ["absent", "rejects", "slow"])
def test_fallback_gives_the_full_answer(case, server, q4_1_package, references, tmp_path):
    prompt = prompts()[1]
    network = NetworkEmulation(rtt_ms=8000) if case == "slow" else NetworkEmulation()
    if case == "rejects":
        proc = ServerProcess("--model", str(q4_1_package), "--threads", "1", "--ttft-budget-s", "0.001",
                             log_path=tmp_path / "rejecting.log")
        url = proc.wait_ready(timeout_s=240)
    else:
        proc, url = None, server.url if case == "slow" else f"ws://127.0.0.1:{free_port()}"
    session = make_session(q4_1_package, url, network=network)
    try:
        shown = [t.token_id for t in session.generate(prompt, mode="pd", max_tokens=MAX_TOKENS, k=24)]
    finally:
        session.close()
        if proc is not None:
            proc.stop()
    r = session.last
    assert shown == references[prompt].token_ids and r.origins == ["device"] * len(shown)
    expected = {"absent": "cloud_unreachable", "rejects": "rejected", "slow": "cloud_slow"}[case]
    assert r.fallback.startswith(expected), r.fallback


def test_server_killed_mid_stream_falls_back_without_loss(q4_1_package, references, tmp_path):
    prompt = prompts()[2]
    proc = ServerProcess("--model", str(q4_1_package), "--threads", "1", "--ttft-budget-s", "60",
                         log_path=tmp_path / "killed.log")
    url = proc.wait_ready(timeout_s=240)
    session = make_session(q4_1_package, url)
    killed = threading.Event()

    async def run():
        shown = []
        async for tok in session.agenerate(prompt, mode="pd", max_tokens=MAX_TOKENS, k=200, pace_s=0.05):
            shown.append(tok)
            if tok.origin == "cloud" and len(shown) == 3 and not killed.is_set():
                proc.proc.kill()
                killed.set()
        return shown

    try:
        shown = asyncio.run(asyncio.wait_for(run(), 180))
    finally:
        session.close()
        proc.stop()
    r = session.last
    print("killed test:", killed.is_set(), r.handover_index, r.fallback, "".join(o[0] for o in r.origins))
    assert [t.token_id for t in shown] == references[prompt].token_ids
    if killed.is_set() and r.handover_index is None:
        assert r.fallback is not None and r.fallback.startswith(("cloud_error", "cloud_timeout"))
        assert "device" in r.origins


def test_a_device_slower_than_the_cloud_takes_over_and_releases_it(server, q4_1_package, tmp_path):
    """The product's headline on this machine: a device that prefills slower than the local cloud (given as a
    JSON profile file) gets the first tokens from the cloud, catches up within a 200-token answer, takes
    over, and the cloud reports the stop at the hand-over index; the text equals device mode."""
    profile = tmp_path / "device.json"
    profile.write_text(json.dumps({"name": "handover-device", "prefill_tok_s": 100.0, "decode_s_per_token": 0.025,
                                   "source": "test: a device slower than this machine's CPU cloud"}))
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompts()[4])  # about 1,000 tokens of real text
    base = [sys.executable, "-m", "pdlink", "generate", "--package", str(q4_1_package), "--prompt-file",
            str(prompt_file), "--max-tokens", "200", "--ignore-eos", "--temperature", "0", "--json", "--threads", "1"]
    outs = {}
    for mode, extra in (("device", []), ("pd", ["--cloud", server.url, "--device-profile", str(profile)])):
        run = subprocess.run(base + ["--mode", mode, *extra], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        outs[mode] = json.loads(run.stdout)
    pd = outs["pd"]
    j, done = pd["handover_index"], pd["cloud_done"]
    assert pd["fallback"] is None and j is not None and 0 < j < 200, (j, pd["fallback"], pd["settings"])
    assert pd["origins"] == ["cloud"] * j + ["device"] * (200 - j)
    assert done["reason"] == "stopped" and done["stop_after_index"] == j - 1
    assert pd["text"] == outs["device"]["text"] and pd["token_ids"] == outs["device"]["token_ids"]
    assert pd["settings"]["predicted"]["cloud_busy_s"] > 0 and pd["emulation"]["device"]["device_profile"] == \
        "handover-device"


def test_cli_contract_pd_and_device_json(server, q4_1_package, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompts()[0])
    base = [sys.executable, "-m", "pdlink.cli", "generate", "--package", str(q4_1_package), "--cloud",
            server.url, "--prompt-file", str(prompt_file), "--max-tokens", "12", "--temperature", "0",
            "--json", "--threads", "1", "--timeline", str(tmp_path / "t.png")]
    outs = {}
    for mode in ("pd", "device", "cloud"):
        extra = ["--device-profile", "laptop", "--net-rtt-ms", "30"] if mode == "pd" else []
        run = subprocess.run(base + ["--mode", mode, *extra], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        outs[mode] = json.loads(run.stdout)
    for mode, out in outs.items():
        for key in ("text", "token_ids", "mode", "ttft_s", "handover_index", "origins", "fallback", "max_gap_s",
                    "cloud_busy_s"):
            assert key in out, (mode, key)
        assert out["mode"] == mode and len(out["origins"]) == len(out["token_ids"])
    assert outs["pd"]["token_ids"] == outs["device"]["token_ids"] == outs["cloud"]["token_ids"]
    assert outs["pd"]["emulation"]["device"]["device_profile"] == "laptop"
    assert set(outs["cloud"]["origins"]) == {"cloud"} and set(outs["device"]["origins"]) == {"device"}
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bad_session_input_is_a_clear_error(q4_1_package, tmp_path):
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("hi")
    base = [sys.executable, "-m", "pdlink.cli", "generate", "--package", str(q4_1_package), "--prompt-file",
            str(prompt_file), "--json"]
    for extra, message in ((["--mode", "pd"], "--cloud"), (["--device-profile", "toaster"], "phone"),
                           (["--net-rtt-ms", "-5"], "net-rtt")):
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and message in run.stderr, run.stderr


def test_chat_with_the_cloud_shows_origins(server, q4_1_package):
    run = subprocess.run([sys.executable, "-m", "pdlink.cli", "chat", "--package", str(q4_1_package), "--cloud",
                          server.url, "--show-origin", "--max-tokens", "8", "--temperature", "0", "--threads", "1"],
                         input="What is the capital of France?\n\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("[cloud]") + run.stdout.count("[device]") >= 1 and "TTFT" in run.stderr


def test_a_cloud_without_refinement_leaves_the_prompt_whole(server, q4_1_package, references):
    prompt = prompts()[1]
    session = make_session(q4_1_package, server.url, refine="on")
    try:
        shown = [t.token_id for t in session.generate(prompt, mode="pd", max_tokens=MAX_TOKENS, k=24)]
        refinement = session.last.to_json()["refinement"]
    finally:
        session.close()
    assert refinement == {"keep_ratio": 0.5, "applied": False, "note": "the cloud does not offer prompt refinement"}
    assert shown == references[prompt].token_ids  # nothing was dropped, so the hand-over stays lossless
