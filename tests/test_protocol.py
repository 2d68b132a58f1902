"""swiftinfer_core/protocol.py: SessionRecord's dict form is asdict's (the session log
stores it), copied, not shared, on fresh random records."""

from __future__ import annotations

import random
from dataclasses import asdict

from swiftinfer_core.protocol import SessionRecord


def test_session_record_to_dict_is_asdict_and_a_copy():
    rng = random.Random()
    for _ in range(20):
        ids = lambda n: [rng.randrange(50000) for _ in range(n)]  # noqa: E731
        r = SessionRecord(f"s{rng.random()}", ids(4), ids(rng.randrange(0, 1100)), ids(rng.randrange(0, 40)),
                          rng.randrange(10**6), rng.randrange(100), rng.randrange(10**5), rng.randrange(10**5),
                          "h", {"nested": {"k": ids(3)}, "n": 1}, rng.randrange(2**31))
        d = r.to_dict()
        assert d == asdict(r) and list(d) == list(asdict(r))
        assert SessionRecord.from_dict(d) == r
        d["window_ids"].append(-1)
        d["extra"]["nested"]["k"].append(-1)
        assert r.window_ids[-1:] != [-1] and r.extra["nested"]["k"][-1] != -1
