"""Prompt refinement end to end: the real torch cloud server scores the prompt, the device prefills only
the kept tokens, and the answer still arrives whole. A cloud without the feature leaves the prompt alone."""

from __future__ import annotations

import pytest

from pdlink.common.real_text import planted_fact_text
from pdlink.edge.device_profile import DeviceProfile
from tests.e2e.test_pd_session import make_session, serve_model

pytestmark = pytest.mark.e2e

MAX_TOKENS = 24
SLOW_DEVICE = DeviceProfile(name="test-device-slow", prefill_tok_s=60.0, decode_s_per_token=0.03,
                            source="test profile (a phone-like prefill)")


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory):
    yield from serve_model("smollm2-135m", tmp_path_factory.mktemp("refine") / "server.log")


def test_device_prefills_the_refined_prompt_and_finishes_the_answer(torch_server, q4_1_package):
    session = make_session(q4_1_package, torch_server.url, profile=SLOW_DEVICE, refine="on", refine_keep_ratio=0.4)
    try:
        prompt = planted_fact_text(4000)
        tokens = list(session.generate(prompt, mode="pd", max_tokens=MAX_TOKENS, k=MAX_TOKENS))
        result = session.last.to_json()
    finally:
        session.close()
    refinement = result["refinement"]
    assert refinement["applied"], refinement
    assert refinement["keep_ratio"] == 0.4 and refinement["prompt_tokens"] == result["prompt_tokens"]
    assert refinement["kept_from_position"] < refinement["device_prompt_tokens"] < result["prompt_tokens"]
    assert [t.index for t in tokens] == list(range(len(tokens))) and result["fallback"] is None
    assert result["completion_tokens"] == len(tokens) and result["origins"][0] == "cloud"
    assert result["emulation"]["cloud_server"].startswith("pdlink-cloud (torch")


def test_refinement_off_sends_no_refine_and_keeps_the_prompt(torch_server, q4_1_package):
    session = make_session(q4_1_package, torch_server.url, profile=SLOW_DEVICE)
    try:
        list(session.generate(planted_fact_text(2000), mode="pd", max_tokens=8, k=8))
        assert session.last.to_json()["refinement"] is None
    finally:
        session.close()
