"""The ramp's attribution of scale-up decisions to replicas, and its hand-over count."""

import json

import pytest

from bench.autoscale_report import decisions, first_tokens, handover, recompute


def up(t: float, starting: int, running: int = 1) -> dict:
    return {"t": t, "kind": "deployment", "status": "UPSCALING", "replica_states": {"RUNNING": running, "STARTING": starting}}


def healthy(t: float, running: int) -> dict:
    return {"t": t, "kind": "deployment", "status": "HEALTHY", "replica_states": {"RUNNING": running}}


def sample(wall: float, **tokens: int) -> dict:
    """replica -> tokens generated so far."""
    return {"t_s": wall - 100, "wall": wall, "replicas": {rid: {"tokens_generated": n} for rid, n in tokens.items()}}


def test_decisions_are_an_episodes_first_poll_and_each_rise_of_starting():
    events = [up(200, 1), up(202, 1), up(204, 2), up(206, 2), up(208, 1, running=2), up(210, 2, running=2),
              healthy(230, 3), up(300, 1, running=3), {"t": 301, "kind": "replica_joined", "replica": "x"}, up(302, 1, running=3)]
    assert decisions(events) == [200, 204, 210, 300]


def test_an_episode_that_asks_for_two_replicas_at_once_is_two_decisions():
    assert decisions([up(50, 2), up(52, 2), healthy(60, 3)]) == [50, 50]


def test_joining_replicas_take_decisions_first_in_first_out():
    events = [{"t": 99, "kind": "replica_joined", "replica": "a"}, up(200, 1), up(202, 1), up(204, 2), healthy(230, 3),
              up(300, 1, running=3), healthy(320, 4)]
    samples = [sample(100, a=0), sample(102, a=5), sample(212, a=9, b=0), sample(214, a=9, b=3),
               sample(220, a=9, b=3, c=0), sample(226, a=9, b=3, c=1), sample(310, a=9, b=3, c=1, d=0)]
    assert first_tokens(samples, events) == {
        "a": {"decision_to_report_s": None, "report_to_tokens_s": 2, "decision_to_tokens_s": None},
        "b": {"decision_to_report_s": 12, "report_to_tokens_s": 2, "decision_to_tokens_s": 14},
        "c": {"decision_to_report_s": 16, "report_to_tokens_s": 6, "decision_to_tokens_s": 22},
        "d": {"decision_to_report_s": 10, "report_to_tokens_s": None, "decision_to_tokens_s": None},
    }


def test_replicas_first_seen_together_are_ordered_by_their_join_events():
    events = [up(200, 1), up(204, 2), {"t": 210, "kind": "replica_joined", "replica": "late"},
              {"t": 209, "kind": "replica_joined", "replica": "zeta"}]
    samples = [sample(100, a=1), sample(212, a=1, late=1, zeta=1)]
    out = first_tokens(samples, events)
    assert out["zeta"]["decision_to_report_s"] == 12 and out["late"]["decision_to_report_s"] == 8


def test_a_decision_after_a_replicas_report_is_not_its_cause_and_waits_for_the_next():
    samples = [sample(80, a=1), sample(100, a=1, b=1), sample(150, a=1, b=1, c=1), sample(220, a=1, b=1, c=1, d=1)]
    out = first_tokens(samples, [up(90, 1), healthy(95, 2), up(200, 1, running=3)])
    assert [out[r]["decision_to_report_s"] for r in "abcd"] == [None, 10, None, 20]


def test_handover_counts_return_turns_of_conversations_whose_replica_drained_before_them():
    events = [{"t": 500, "kind": "replica_drained", "replica": "x", "sessions": 3},
              {"t": 600, "kind": "replica_drained", "replica": "y", "sessions": 2}, healthy(610, 1)]
    last = {"c1": "x", "c2": "x", "c3": "x", "c4": "y", "c5": "z", "c6": "x"}
    returns = {"c1": {"ok": True, "cache": "migrated", "due_wall": 700}, "c2": {"ok": True, "cache": "rebuilt", "due_wall": 700},
               "c3": {"ok": False, "cache": "", "due_wall": 700},
               "c4": {"ok": True, "cache": "warm", "due_wall": 550},  # y drained after this turn was sent
               "c5": {"ok": True, "cache": "warm", "due_wall": 700}}
    assert handover(events, last, returns) == {
        "sessions_drained": 5, "replicas_drained": ["x", "y"], "conversations": 6, "returned_ok": 4, "returned_failed": 1,
        "not_sent": 1, "on_drained_replica": 4, "not_returned": 2,
        "cache": {"migrated": 1, "rebuilt": 1, "warm": 0, "new": 0},
    }


def test_handover_keeps_cache_kinds_beyond_the_four():
    events = [{"t": 1, "kind": "replica_drained", "replica": "x", "sessions": 1}]
    out = handover(events, {"c": "x"}, {"c": {"ok": True, "cache": "replayed", "due_wall": 2}})
    assert out["cache"] == {"migrated": 0, "rebuilt": 0, "warm": 0, "new": 0, "replayed": 1}


def test_recompute_rewrites_replica_start_only(tmp_path):
    stored = {"command": "ramp", "samples": [sample(100, a=1), sample(112, a=1, b=1)], "events": [up(104, 1), up(106, 1)],
              "replica_start": {"b": {"decision_to_report_s": 6}}, "audit": {"lost": 0}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(stored, indent=1))
    recompute(path, "python bench/autoscale_report.py run.json")
    data = json.loads(path.read_text())
    assert data["replica_start"]["b"]["decision_to_report_s"] == pytest.approx(8)
    assert data["replica_start_recomputed"] == "python bench/autoscale_report.py run.json"
    assert {k: v for k, v in data.items() if k not in ("replica_start", "replica_start_recomputed")} == {
        k: v for k, v in stored.items() if k != "replica_start"}
