"""bench/load.py reads the server's /metrics: gauges summed, phases per worst replica."""

from bench.load import parse_gauges, server_peaks
from deployments.http.metrics import ServiceMetrics
from deployments.messages import CacheState, ReplicaStats, TurnPhase
from swiftinfer_core.engine.handoff import Handoff


def replica_stats(rid: str, running: int, phases: dict, handoff: dict | None = None) -> ReplicaStats:
    return ReplicaStats(rid, capacity=8, free_slots=8, sessions=0, resident=0, active_sessions=0, running=running, waiting=0,
                        evictions=0, tokens_generated=0, tokens_prefilled=0, kv_use=0.0, draining=False, pid=0, idle_evicted=0,
                        rolled_back=0, rebalanced=0, turns=dict.fromkeys(CacheState, 0), turns_not_committed=0, direct_starts=0, phases=phases,
                        handoff=handoff or {})


def _text(replicas: dict) -> str:
    m = ServiceMetrics()
    m.set_pool(replicas, 0)
    return m.render().decode()


def test_gauges_sum_and_phases_take_the_worst_replica():
    a = parse_gauges(_text({"r1": replica_stats("r1", running=3, phases={TurnPhase.FIRST_TOKEN: (0.1, 0.5)}),
                            "r2": replica_stats("r2", running=4, phases={TurnPhase.FIRST_TOKEN: (0.05, 2.0), TurnPhase.COMMIT: (0.01, 0.01)})}), 1.0)
    assert a["swiftinfer_running_requests"] == 7.0
    assert (a["phase_first_token_p99"], a["phase_first_token_p50"], a["phase_commit_p50"]) == (2.0, 0.1, 0.01)
    b = parse_gauges(_text({"r1": replica_stats("r1", running=1, phases={TurnPhase.FIRST_TOKEN: (0.25, 0.25)})}), 2.0)
    peaks = server_peaks([a, b])
    assert peaks["server_max"]["swiftinfer_running_requests"] == 7.0
    assert peaks["server_phases"]["phase_first_token_p99"] == {"last": 0.25, "max": 2.0}
    assert peaks["server_phases"]["phase_commit_p50"] == {"last": 0.01, "max": 0.01}


def test_ingress_hops_are_read_beside_the_replica_phases():
    from deployments.messages import IngressPhase
    from deployments.turn_timing import TurnTimer

    hops = TurnTimer(keep=10, phases=IngressPhase)
    for x in (0.002, 0.004, 0.006):
        hops.record(IngressPhase.ROUTE, x)
    hops.record(IngressPhase.RETURN, 0.25)
    m = ServiceMetrics()
    m.set_pool({"r1": replica_stats("r1", running=1, phases={TurnPhase.FIRST_TOKEN: (0.125, 0.5)})}, 0)
    m.set_ingress_phases(hops.summary())
    row = parse_gauges(m.render().decode(), 1.0)
    assert (row["ingress_route_p50"], row["ingress_route_p99"], row["ingress_return_p50"]) == (0.004, 0.006, 0.25)
    assert "ingress_prepare_p50" not in row  # no samples, no gauge
    assert row["phase_first_token_p50"] == 0.125
    assert server_peaks([row])["server_phases"]["ingress_route_p50"] == {"last": 0.004, "max": 0.004}
    m.set_ingress_phases({})
    assert "ingress_phase_seconds{" not in m.render().decode()


def test_handoff_legs_are_read_per_worst_replica():
    m = ServiceMetrics()
    m.set_pool({"r1": replica_stats("r1", 1, {}, {Handoff.PIPE: (0.001, 0.004), Handoff.LAG: (0.002, 0.030)}),
                "r2": replica_stats("r2", 1, {}, {Handoff.PIPE: (0.003, 0.005), Handoff.WAKE: (0.0005, 0.02)})}, 0)
    row = parse_gauges(m.render().decode(), 1.0)
    assert (row["handoff_pipe_p50"], row["handoff_pipe_p99"]) == (0.003, 0.005)
    assert (row["handoff_lag_p50"], row["handoff_lag_p99"], row["handoff_wake_p50"]) == (0.002, 0.030, 0.0005)
    assert server_peaks([row])["server_phases"]["handoff_lag_p99"] == {"last": 0.030, "max": 0.030}
