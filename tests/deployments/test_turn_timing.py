"""Per-phase turn times: exact quantiles over the kept samples."""

from deployments.messages import TurnPhase
from deployments.turn_timing import Stopwatch, TurnTimer
from message_factories import replica_stats


def test_quantiles_over_the_last_samples_only():
    t = TurnTimer(keep=100)
    for x in range(1000):  # only the last 100 (900..999) are kept
        t.record(TurnPhase.LEASE, x / 1000)
    for x in range(100, -1, -1):  # 100 down to 0: the kept ones are 99..0, order does not matter
        t.record(TurnPhase.COMMIT, float(x))
    s = t.summary()
    assert s == {TurnPhase.LEASE: (0.949, 0.998), TurnPhase.COMMIT: (49.0, 98.0)}
    flat = replica_stats(phases=s).to_dict()
    assert {k: v for k, v in flat.items() if k.startswith("phase_")} == {
        "phase_lease_p50": 0.949, "phase_lease_p99": 0.998, "phase_commit_p50": 49.0, "phase_commit_p99": 98.0}


def test_stopwatch_laps_are_consecutive():
    t = TurnTimer()
    w = Stopwatch(t)
    for phase in TurnPhase:
        w.lap(phase)
    s = t.summary()
    assert all(s[p][0] >= 0 for p in TurnPhase)


def test_phase_quantiles_reach_metrics_per_replica():
    from deployments.http.metrics import ServiceMetrics

    m = ServiceMetrics()
    m.set_pool({"r1": replica_stats("r1", sessions=3, phases={TurnPhase.FIRST_TOKEN: (0.25, 1.5)}),
                "r2": replica_stats("r2", phases={TurnPhase.COMMIT: (0.0625, 0.125)})}, 3)
    text = m.render().decode()
    assert 'swiftinfer_turn_phase_seconds{phase="first_token",quantile="0.5",replica="r1"} 0.25' in text
    assert 'swiftinfer_turn_phase_seconds{phase="first_token",quantile="0.99",replica="r1"} 1.5' in text
    assert 'swiftinfer_turn_phase_seconds{phase="commit",quantile="0.99",replica="r2"} 0.125' in text
    assert 'swiftinfer_active_sessions{replica="r1"} 3.0' in text
    m.set_pool({"r2": replica_stats("r2")}, 0)  # a replica gone: its phases leave with it
    assert "turn_phase_seconds{" not in m.render().decode()
