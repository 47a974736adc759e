"""The SLO sweep of the capacity benchmark on a small synthetic trace (simulator only, no model)."""

import pytest

from pdlink.bench.capacity_slo import plot_slo_sweeps, slo_sweep
from pdlink.traces.report import TraceBenchConfig


@pytest.fixture
def small_trace(tmp_path):
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(24):
        rows.append(f"2023-11-16 18:15:{i * 2:02d}.000000,{1024 + 256 * (i % 8)},{8 + i % 5}")
    path = tmp_path / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_looser_slo_lets_a_fast_device_answer_more_requests_alone(small_trace, tmp_path):
    cfg = TraceBenchConfig(trace=str(small_trace), simulate=True, cloud_profile="h100-vllm", max_requests=24,
                           max_output_tokens=64)
    points = slo_sweep(cfg, ["laptop-gpu", "phone-cpu"], [3.0, 0.5], iterations=1)
    assert [p["slo_s"] for p in points] == [0.5, 3.0]
    alone = [p["profiles"]["laptop-gpu"]["device_alone_rate"] for p in points]
    assert alone[0] < alone[1]
    for point in points:
        assert point["capacity_cloud_rps"] > 0
        assert point["profiles"]["phone-cpu"]["device_alone_rate"] == 0.0  # 60 tok/s never meets 3 s on 1k tokens
    case = {"trace": "small", "cloud_profile": "h100-vllm", "arrivals": "as traced", "slo_sweep": points}
    plot_slo_sweeps([case], tmp_path / "slo.png")
    assert (tmp_path / "slo.png").stat().st_size > 0
