"""The chaos report's per-fault attribution (bench/chaos.py), on hand-made turn records:
which conversations each fault hit and how long until each was served again."""

from bench.chaos import affected_sessions
from bench.load_client import TurnResult


def turn(sid: str, scheduled: float, done: float, attempts: int = 2, ok: bool = True, cache: str = "warm") -> TurnResult:
    return TurnResult(sid, 0, f"{sid}-k", scheduled, ok=ok, attempts=attempts, sent=done - 1.0, done=done, cache=cache)


def test_a_turn_started_between_faults_and_hit_by_the_next_counts_for_the_next_only():
    # faults at 10 (A) and 20 (B); "late" started after A, was in flight at B and retried across it
    turns = [turn("inflight", 8.0, 12.0), turn("after", 11.0, 14.0), turn("late", 18.0, 25.0)]
    assert affected_sessions(turns, 10.0, 20.0) == {"inflight": 2.0, "after": 4.0}
    assert affected_sessions(turns, 20.0, float("inf")) == {"late": 5.0}


def test_a_turn_in_flight_at_a_fault_counts_there_even_when_it_outlives_the_next():
    # hung across A (in flight at 10) until after B: A's recovery time says so, and B met it too
    turns = [turn("hung", 9.0, 75.0)]
    assert affected_sessions(turns, 10.0, 20.0) == {"hung": 65.0}
    assert affected_sessions(turns, 20.0, float("inf")) == {"hung": 55.0}


def test_first_attempt_successes_failures_and_earlier_turns_are_not_affected():
    turns = [
        turn("first-try", 11.0, 12.0, attempts=1),
        turn("gave-up", 11.0, 15.0, ok=False),
        turn("before", 5.0, 9.0),  # done before the fault
        turn("max", 11.0, 13.0), turn("max", 14.0, 17.0),  # a session's slowest turn is its time
    ]
    assert affected_sessions(turns, 10.0, 20.0) == {"max": 7.0}


def test_a_first_attempt_served_from_a_rebuilt_cache_counts():
    # a lost replica's session whose turn the ingress resent before it streamed: one attempt, KV rebuilt
    turns = [turn("lost", 11.0, 13.0, attempts=1, cache="rebuilt"), turn("kept", 11.0, 13.0, attempts=1),
             turn("new", 11.0, 12.0, attempts=1, cache="new"), turn("later", 21.0, 22.0, attempts=1, cache="rebuilt")]
    assert affected_sessions(turns, 10.0, 20.0) == {"lost": 3.0}
