"""What the session directory answers about sessions and replicas.

Sessions: a session's description, its committed turns as the log holds them,
which of a replica's copies it still owns (or no longer does), owner counts and
the log's own stats. Replicas: the stats each reports every period, the
departures routers saw, and the cluster view built from both.

Part of ``SessionDirectory`` (directory.py), as a base class: the same actor,
the same event loop, the same state (``_entries``, ``_owned``, ``_reports``,
``_log``, ``_writer``, ``loaded``, ``_placements``).
"""

from __future__ import annotations

import asyncio
import os
import time

from deployments.messages import ReplicaStats, SessionDescription
from deployments.sessions.session_log import TurnEntry


class DirectoryReads:
    # ---- reads -----------------------------------------------------------------
    def describe(self, sid: str) -> SessionDescription | None:
        entry = self._entries.get(sid)
        if entry is None:
            return None
        return SessionDescription(entry.owner, entry.record, entry.seq, entry.moves, entry.created, entry.updated)

    async def turns(self, sid: str, after_seq: int, limit: int) -> list[TurnEntry]:
        """Committed turns of ``sid`` from the log itself (the exactly-once audit)."""
        return await asyncio.to_thread(self._log.turns, sid, after_seq, limit)

    def unowned(self, rid: str, sids: list[str]) -> list[str]:
        """Those of ``sids`` (copies ``rid`` holds) that are deleted or owned by
        another replica; a session with no owner (handed back) may still come to ``rid``."""
        out = []
        for sid in sids:
            entry = self._entries.get(sid)
            if entry is None or entry.owner not in (None, rid):
                out.append(sid)
        return out

    def owned(self, rid: str, sids: list[str]) -> list[str]:
        """Those of ``sids`` that ``rid`` owns now: a drain leaves KV only for these
        (``hold_kv`` refuses the rest, among them sessions it already gave back)."""
        mine = self._owned.get(rid, set())
        return [sid for sid in sids if sid in mine]

    def owners(self) -> dict[str, int]:
        """Replica id -> sessions it owns (balance metrics)."""
        return {rid: len(s) for rid, s in self._owned.items() if s}

    def num_sessions(self) -> int:
        return len(self._entries)

    def log_stats(self) -> dict:
        return {**self._writer.stats.to_dict(), "loaded_at_start": self.loaded, "sessions": len(self._entries), "pid": os.getpid(),
                "placements": self._placements}

    # ---- replica stats (metrics, readiness, leases) ----------------------------
    def report(self, rid: str, stats: ReplicaStats) -> None:
        self._reports.report(rid, stats)

    def departed(self, rids: list[str]) -> None:
        """Routers saw ``rids`` leave Serve's routing table (router.py ``update_replicas``;
        ``place`` carries the same list): no fair share, no room for hand-backs
        (replica_reports.py ``routable``)."""
        self._reports.departing(rids)

    def cluster(self, max_age_s: float, scope: str = "", max_sessions: int = 200) -> dict:
        """The cluster view's data (deployments/http/playground.py): live replicas with
        their report time, stats, tokens/s between their last two reports, owned sessions (ids starting with ``scope``,
        the tenant's prefix; at most ``max_sessions`` each, newest first), and recent
        events. A replica silent past ``max_age_s`` is dropped and, once, logged lost."""
        now = time.time()
        replicas = {}
        for rid, t, stats, rate in self._reports.recent(now, max_age_s):
            mine = [(sid, self._entries[sid]) for sid in self._owned.get(rid, ()) if sid.startswith(scope) and sid in self._entries]
            mine.sort(key=lambda p: -p[1].updated)
            sessions = [{"id": sid, "seq": e.seq, "moves": e.moves, "busy": e.lease == rid, "updated": e.updated}
                        for sid, e in mine[:max_sessions]]
            replicas[rid] = {"reported_at": t, "stats": stats, "tokens_per_s": rate, "owned": len(mine), "sessions": sessions}
        events = [e for e in self._reports.events if "session" not in e or e["session"].startswith(scope)]
        return {"now": now, "replicas": replicas, "events": events}

    def replica_stats(self, max_age_s: float) -> dict[str, ReplicaStats]:
        return self._reports.live(max_age_s)
