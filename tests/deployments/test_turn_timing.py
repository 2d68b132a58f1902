"""Per-phase turn times: exact quantiles over the kept samples."""

from deployments.turn_timing import PHASES, Stopwatch, TurnTimer


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
