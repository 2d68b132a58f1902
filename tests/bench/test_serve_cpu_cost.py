"""bench/serve_cpu_cost.py's split of each role's CPU into per-turn and per-chunk parts."""

import pytest

from bench.serve_cpu_cost import turn_and_chunk_costs


def _row(variant, chunks, turns=32, per_turn_s=0.006, per_chunk_s=0.0003):
    cpu = turns * per_turn_s + chunks * per_chunk_s
    return {"variant": variant, "chunks": chunks, "turns_ok": turns,
            "cpu_s_above_idle": {"ingress": cpu, "llm_replica": 2 * cpu, "directory": turns * 0.004}}


def test_two_paces_of_the_same_turns_recover_both_costs():
    split = turn_and_chunk_costs([_row("haproxy_grpc", 800), _row("haproxy_grpc_pace200", 300)])
    assert split["ingress"]["per_turn_ms"] == pytest.approx(6.0) and split["ingress"]["per_chunk_ms"] == pytest.approx(0.3)
    assert split["llm_replica"]["per_turn_ms"] == pytest.approx(12.0) and split["llm_replica"]["per_chunk_ms"] == pytest.approx(0.6)
    assert split["directory"]["per_chunk_ms"] == pytest.approx(0.0, abs=1e-12)


def test_no_split_without_both_runs_or_with_different_turns():
    assert turn_and_chunk_costs([_row("haproxy_grpc", 800)]) == {}
    assert turn_and_chunk_costs([_row("haproxy_grpc", 800), _row("haproxy_grpc_pace200", 300, turns=31)]) == {}


def test_the_direct_front_pair_splits_the_same_way():
    split = turn_and_chunk_costs([_row("direct", 800), _row("direct_pace200", 300), _row("haproxy_grpc", 700)], base="direct")
    assert split["llm_replica"]["per_turn_ms"] == pytest.approx(12.0) and split["llm_replica"]["per_chunk_ms"] == pytest.approx(0.6)
    assert turn_and_chunk_costs([_row("direct", 800)], base="direct") == {}
