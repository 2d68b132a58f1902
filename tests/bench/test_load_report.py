"""The load report's concurrency timeline, on hand-made turn records; the load client's per-token gaps, on hand-made events."""

import pytest

from bench.load_client import TurnResult
from bench.load_report import summarize, timeline


def turn(sid: str, round_: int, scheduled: float, sent: float, done: float, ok: bool = True) -> TurnResult:
    return TurnResult(sid, round_, f"{sid}-r{round_}", scheduled, ok=ok, attempts=1, sent=sent, first_token=sent + 0.1,
                      done=done, completion_tokens=2 if ok else 0, gaps=[0.1] if ok else [])


def test_open_sessions_span_think_time_and_turns_in_flight_do_not():
    turns = [
        turn("a", 0, 0.0, 0.0, 2.5), turn("a", 1, 4.0, 4.2, 6.5),  # think 2.5 .. 4.0: open, not in flight
        turn("b", 0, 1.0, 3.0, 5.0),  # waited 1.0 .. 3.0 for a client-side slot: open, not yet in flight
    ]
    line = timeline(turns, 0.0, 7.0)
    assert line["t_s"] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert line["open_sessions"] == [1, 2, 2, 2, 2, 1, 1, 0]
    assert line["turns_in_flight"] == [1, 1, 1, 1, 1, 1, 1, 0]
    conc = summarize(turns, 0.0, 7.0)["concurrency"]
    assert conc["open_sessions"]["max"] == 2 and conc["turns_in_flight"]["max"] == 1
    assert conc["open_sessions"]["share_ge_64"] == 0


def test_unfinished_turn_counts_until_the_end():
    line = timeline([turn("a", 0, 0.0, 0.5, 0.0, ok=False)], 0.0, 3.0)
    assert line["open_sessions"] == [1, 1, 1, 0] and line["turns_in_flight"] == [0, 1, 1, 0]


def test_itl_per_token_spreads_each_chunk_gap_over_its_tokens():
    a = turn("a", 0, 0.0, 0.0, 1.0)
    a.token_gaps = [0.0, 0.05, 0.05, 0.02]  # first chunk 2 tokens; then 2 tokens after 0.1 s; then 1 after 0.02 s
    b = turn("b", 0, 0.0, 0.0, 1.0)  # a run without --token-counts lists none
    s = summarize([a, b], 0.0, 1.0)
    assert s["itl_token_s"]["n"] == 4 and s["itl_token_s"]["p50"] == 0.05
    assert s["itl_s"]["n"] == 2  # the per-chunk gaps stay as they were


def test_token_clock_takes_each_chunks_tokens_from_the_running_usage_or_the_listed_logprobs():
    from bench.load_client import TokenClock

    def chunk(usage: int | None = None, listed: int | None = None) -> tuple[dict, dict]:
        choice = {"delta": {"content": "x"}, "logprobs": None if listed is None else {"content": [{}] * listed}}
        event = {"choices": [choice]} | ({} if usage is None else {"usage": {"prompt_tokens": 7, "completion_tokens": usage}})
        return event, choice

    clock = TokenClock()  # continuous_usage_stats: the rise of completion_tokens since the last content chunk
    for now, (event, choice) in ((1.0, chunk(usage=2)), (1.1, chunk(usage=4)), (1.12, chunk(usage=5)), (1.2, chunk(usage=5))):
        clock.content(now, event, choice)
    assert clock.first == 1.0 and clock.counted == 5
    assert clock.gaps == pytest.approx([0.1, 0.02, 0.08])
    assert clock.token_gaps == pytest.approx([0.0, 0.05, 0.05, 0.02])  # the last chunk brought no token: no entry
    listed = TokenClock()  # a server without continuous usage: the tokens each chunk's logprobs list, as before
    for now, (event, choice) in ((1.0, chunk(listed=3)), (1.3, chunk(listed=2)), (1.4, chunk())):
        listed.content(now, event, choice)
    assert listed.token_gaps == pytest.approx([0.0, 0.0, 0.15, 0.15]) and listed.gaps == pytest.approx([0.3, 0.1])
