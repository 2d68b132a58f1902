"""What the session directory keeps of the replicas: their latest stats reports
and the recent events of the cluster view.

Each replica reports ``ReplicaStats`` every ``stats_report_period_s``; the
report's time keeps its leases alive (directory.py), the stats feed /metrics and
readiness (``live``), and two successive reports give its tokens/s for the
cluster view. Events (``{"t", "kind", ...}``: a session moved, a replica joined,
drained or was lost) are kept as the last ``MAX_EVENTS``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterator

from deployments.messages import ReplicaStats

MAX_EVENTS = 200  # recent events the cluster view can show
MAX_DEPARTING = 1024  # replicas remembered as out of Serve's routing table


class ReplicaReports:
    def __init__(self) -> None:
        self._stats: dict[str, tuple[float, ReplicaStats]] = {}  # replica id -> (time, stats)
        self._prev_tokens: dict[str, tuple[float, int]] = {}  # replica id -> (time, tokens_generated) of the report before the last
        self._gone: set[str] = set()  # replicas already reported lost (one event each)
        # replicas a router saw leave Serve's routing table, oldest first (a dict as an ordered set):
        # scaled down (still reporting, not yet draining, until Serve calls __del__) or dead
        self._departing: dict[str, None] = {}
        self.events: deque[dict] = deque(maxlen=MAX_EVENTS)

    def event(self, kind: str, **fields) -> None:
        self.events.append({"t": time.time(), "kind": kind, **fields})

    def report(self, rid: str, stats: ReplicaStats) -> None:
        if rid not in self._stats:
            self.event("replica_joined", replica=rid)
        self._gone.discard(rid)
        if rid in self._stats:  # the previous sample: the cluster view derives tokens/s from the two
            t, old = self._stats[rid]
            self._prev_tokens[rid] = (t, old.tokens_generated)
        self._stats[rid] = (time.time(), stats)

    def reported_at(self, rid: str | None) -> float:
        """Time of ``rid``'s last report (0: never)."""
        return self._stats.get(rid, (0.0, None))[0]

    def forget(self, rid: str) -> None:
        """A drained replica: it reports no more."""
        self._stats.pop(rid, None)
        self._prev_tokens.pop(rid, None)

    def live(self, max_age_s: float) -> dict[str, ReplicaStats]:
        now = time.time()
        return {rid: s for rid, (t, s) in self._stats.items() if now - t <= max_age_s}

    def departing(self, rids) -> None:
        """Routers no longer route to ``rids`` (Serve stopped them). Replica ids are never
        reused, so they stay out of ``routable`` for good (the oldest forgotten past
        ``MAX_DEPARTING``)."""
        self._departing.update(dict.fromkeys(rids))
        while len(self._departing) > MAX_DEPARTING:
            self._departing.pop(next(iter(self._departing)))

    def routable(self, max_age_s: float) -> dict[str, ReplicaStats]:
        """``live`` less the replicas draining or that routers saw leave: those that can still
        take sessions. A scaled-down replica reports itself draining only once Serve calls its
        ``__del__``, after its last turns; until then it would count for fair shares and free slots."""
        return {rid: s for rid, s in self.live(max_age_s).items() if rid not in self._departing and not s.draining}

    def recent(self, now: float, max_age_s: float) -> Iterator[tuple[str, float, ReplicaStats, float | None]]:
        """``(replica, reported at, stats, tokens/s or None)`` of replicas heard from
        within ``max_age_s``; one silent longer is logged lost, once."""
        for rid, (t, _) in self._stats.items():
            if now - t > max_age_s and rid not in self._gone:
                self._gone.add(rid)
                self.event("replica_lost", replica=rid)
        for rid, (t, stats) in self._stats.items():
            if now - t > max_age_s:
                continue
            rate = None
            if rid in self._prev_tokens and t > self._prev_tokens[rid][0]:
                t0, n0 = self._prev_tokens[rid]
                rate = max(0.0, (stats.tokens_generated - n0) / (t - t0))
            yield rid, t, stats, rate
