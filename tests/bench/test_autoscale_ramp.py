"""The ramp's choice of talking conversations and its replica join/leave record."""

from bench.autoscale_ramp import parse_phases, replica_changes, talking


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
