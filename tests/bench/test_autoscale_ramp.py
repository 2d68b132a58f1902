"""The ramp's choice of talking conversations, its replica join/leave record and its return phase."""

import asyncio

from bench.autoscale_ramp import (
    handover_inputs,
    parse_phases,
    replica_changes,
    return_phase,
    talking,
)
from bench.load_client import TurnResult


def test_shrinking_phases_keep_conversations_from_every_arrival_wave():
    members = talking(parse_phases(["16:1", "64:1", "140:1", "48:1", "16:1"]))
    assert [len(m) for m in members] == [16, 64, 140, 48, 16]
    assert members[0] == set(range(16)) and members[2] == set(range(140))
    assert members[4] <= members[3] <= members[2]
    # the last wave (ids 64..139, placed after the scale-up) keeps a share on the way down
    assert len({i for i in members[3] if i >= 64}) == 26 and len({i for i in members[4] if i >= 64}) == 8
    assert sorted(members[4]) == [0, 8, 17, 26, 35, 43, 52, 61, 70, 78, 87, 96, 105, 113, 122, 131]


def test_growing_after_shrinking_adds_new_ids():
    members = talking(parse_phases(["4:1", "2:1", "5:1"]))
    assert [sorted(m) for m in members] == [[0, 1, 2, 3], [0, 2], [0, 2, 4, 5, 6]]


def test_replica_changes_lists_joins_and_leaves():
    samples = [{"t_s": 0.0, "phase": 0, "replicas": {"a": {}}},
               {"t_s": 2.0, "phase": 1, "replicas": {"a": {}, "b": {}, "c": {}}},
               {"t_s": 4.0, "phase": 1, "replicas": {"a": {}, "b": {}, "c": {}}},
               {"t_s": 6.0, "phase": 3, "replicas": {"a": {}, "c": {}}}]
    assert replica_changes(samples) == [
        {"t_s": 2.0, "phase": 1, "joined": ["b", "c"], "left": [], "live": 3},
        {"t_s": 6.0, "phase": 3, "joined": [], "left": ["b"], "live": 2},
    ]


def test_return_phase_runs_one_turn_each_at_most_concurrency_at_once():
    running, peak, order = [0], [0], []

    async def turn(i):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        order.append(i)
        for _ in range(3):
            await asyncio.sleep(0)
        running[0] -= 1
        return f"turn {i}"

    out = asyncio.run(return_phase(turn, list(range(10)), 3, 60.0))
    assert out == {i: f"turn {i}" for i in range(10)} and order == list(range(10)) and peak[0] == 3


def test_return_phase_starts_no_turn_after_its_seconds():
    now = [0.0]

    async def turn(i):
        await asyncio.sleep(0)
        now[0] += 1.0  # each turn takes one clock second
        return i

    out = asyncio.run(return_phase(turn, list(range(6)), 1, 2.5, clock=lambda: now[0]))
    assert sorted(out) == [0, 1, 2]  # started at 0, 1, 2; the fourth would start at 3


def test_handover_inputs_take_the_last_acknowledged_turn_of_the_phases():
    def res(sid, replica, ok=True, scheduled=0.0, cache="warm"):
        return TurnResult(sid, 0, sid, scheduled=scheduled, ok=ok, replica=replica, cache=cache)

    turns = [(0, res("s1", "a")), (1, res("s1", "b")), (1, res("s1", "c", ok=False)), (0, res("s2", "a")),
             (2, res("s2", "d", scheduled=5.0, cache="migrated"))]
    last, due = handover_inputs(turns, 2, [turns[-1][1]], 1000.0)
    assert last == {"s1": "b", "s2": "a"}
    assert due == {"s2": {"ok": True, "cache": "migrated", "due_wall": 1005.0}}
