"""Per-phase turn times: exact quantiles over the kept samples."""

from deployments.replica.turn_timing import PHASES, Stopwatch, TurnTimer


def test_quantiles_over_the_last_samples_only():
    t = TurnTimer(keep=100)
    for x in range(1000):  # only the last 100 (900..999) are kept
        t.record("lease", x / 1000)
    for x in range(100, -1, -1):  # 100 down to 0: the kept ones are 99..0, order does not matter
        t.record("commit", float(x))
    s = t.summary()
    assert (s["phase_lease_p50"], s["phase_lease_p99"]) == (0.949, 0.998)
    assert (s["phase_commit_p50"], s["phase_commit_p99"]) == (49.0, 98.0)
    assert set(s) == {"phase_lease_p50", "phase_lease_p99", "phase_commit_p50", "phase_commit_p99"}


def test_stopwatch_laps_are_consecutive():
    t = TurnTimer()
    w = Stopwatch(t)
    for phase in PHASES:
        w.lap(phase)
    s = t.summary()
    assert all(s[f"phase_{p}_p50"] >= 0 for p in PHASES)


def test_phase_quantiles_reach_metrics_per_replica():
    from deployments.http.metrics import ServiceMetrics

    m = ServiceMetrics()
    m.set_pool({"r1": {"phase_first_token_p50": 0.25, "phase_first_token_p99": 1.5, "sessions": 3},
                "r2": {"phase_commit_p99": 0.125}}, 3)
    text = m.render().decode()
    assert 'swiftinfer_turn_phase_seconds{phase="first_token",quantile="0.5",replica="r1"} 0.25' in text
    assert 'swiftinfer_turn_phase_seconds{phase="first_token",quantile="0.99",replica="r1"} 1.5' in text
    assert 'swiftinfer_turn_phase_seconds{phase="commit",quantile="0.99",replica="r2"} 0.125' in text
    m.set_pool({"r2": {}}, 0)  # a replica gone: its phases leave with it
    assert "turn_phase_seconds{" not in m.render().decode()
