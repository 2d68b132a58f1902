"""bench/turn_lengths.py: the per-turn reply lengths the closed-loop benches share, and
that the engine-alone closed loop (bench/engine_batches.py) generates exactly them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from bench.load import parse_args
from bench.turn_lengths import turn_tokens


def test_one_length_without_a_range():
    assert {turn_tokens(64, None, i, r) for i in range(20) for r in range(5)} == {64}
    assert {turn_tokens(64, 64, i, r) for i in range(20) for r in range(5)} == {64}


def test_draws_cover_the_range_and_repeat_for_the_same_turn():
    draws = [turn_tokens(64, 128, i, r) for i in range(64) for r in range(8)]
    assert min(draws) >= 64 and max(draws) <= 128
    assert min(draws) < 70 and max(draws) > 122 and len(set(draws)) > 40  # spread, not one value
    assert draws == [turn_tokens(64, 128, i, r) for i in range(64) for r in range(8)]
    # a round's conversations end on different steps: that is the point
    assert len({turn_tokens(64, 128, i, 3) for i in range(128)}) > 40


def test_a_reversed_range_is_refused():
    with pytest.raises(ValueError, match="shorter than the shortest"):
        turn_tokens(64, 32, 0, 0)


def test_load_client_takes_and_checks_the_range(tmp_path):
    spec, _, _ = parse_args(["--url", "http://x", "--max-tokens", "8", "--max-tokens-hi", "16", "--out", str(tmp_path)])
    assert (spec.max_tokens, spec.max_tokens_hi) == (8, 16)
    assert parse_args(["--url", "http://x", "--out", str(tmp_path)])[0].max_tokens_hi is None
    with pytest.raises(SystemExit):
        parse_args(["--url", "http://x", "--max-tokens", "8", "--max-tokens-hi", "4", "--out", str(tmp_path)])


def test_engine_closed_loop_generates_each_turns_drawn_length(make_core):
    from bench.engine_batches import closed_loop
    from swiftinfer_core import Engine

    a = SimpleNamespace(tokens=2, tokens_hi=6, rounds=3, words=3, system_words=0)
    engine = Engine(core=make_core())
    try:
        row = asyncio.run(closed_loop(engine, 3, "tl", a))
    finally:
        engine.close()
    want = sum(turn_tokens(2, 6, i, r) for i in range(3) for r in range(3))
    assert (row["finished"], row["failed"]) == (9, 0)  # each turn ended with exactly its own draw
    assert round(row["tok_s"] * row["wall_s"]) == want
