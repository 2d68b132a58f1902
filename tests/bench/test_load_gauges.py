"""bench/load.py reads the server's /metrics: gauges summed, phases per worst replica."""

from bench.load import parse_gauges, server_peaks
from deployments.http.metrics import ServiceMetrics


def _text(replicas: dict) -> str:
    m = ServiceMetrics()
    m.set_pool(replicas, 0)
    return m.render().decode()


def test_gauges_sum_and_phases_take_the_worst_replica():
    a = parse_gauges(_text({"r1": {"running": 3, "phase_first_token_p99": 0.5, "phase_first_token_p50": 0.1},
                            "r2": {"running": 4, "phase_first_token_p99": 2.0, "phase_commit_p50": 0.01}}), 1.0)
    assert a["swiftinfer_running_requests"] == 7.0
    assert (a["phase_first_token_p99"], a["phase_first_token_p50"], a["phase_commit_p50"]) == (2.0, 0.1, 0.01)
    b = parse_gauges(_text({"r1": {"running": 1, "phase_first_token_p99": 0.25}}), 2.0)
    peaks = server_peaks([a, b])
    assert peaks["server_max"]["swiftinfer_running_requests"] == 7.0
    assert peaks["server_phases"]["phase_first_token_p99"] == {"last": 0.25, "max": 2.0}
    assert peaks["server_phases"]["phase_commit_p50"] == {"last": 0.01, "max": 0.01}
