"""The group-commit writer over a real SQLite log: concurrent submitters share
transactions, each learns its own outcome, and a failed batch fails only its
own operations."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import SessionLogConfig
from deployments.sessions.log_writer import BatchWriter
from deployments.sessions.log_backends import open_log
from deployments.sessions.session_log import LogConflictError

from test_session_log import commit


@pytest.fixture
def sqlite_log(tmp_path):
    log = open_log(SessionLogConfig(path=str(tmp_path / "w.sqlite3")), "w")
    yield log
    log.close()


def test_concurrent_turns_share_batches_and_stay_in_order(sqlite_log):
    writer = BatchWriter(sqlite_log, max_batch=64)

    async def session(sid: str, turns: int) -> None:
        for seq in range(1, turns + 1):
            await writer.submit(commit(sid, seq, f"{sid}-{seq}"))

    async def main() -> None:
        await asyncio.gather(*(session(f"s{i}", 5) for i in range(40)))

    asyncio.run(main())
    st = writer.stats
    assert st.ops == 200 and st.refused == 0 and st.failed_batches == 0
    assert st.batches < 100 and st.largest_batch > 1, st  # group commit: fewer transactions than turns
    for i in range(40):
        assert [t.seq for t in sqlite_log.turns(f"s{i}", 0, 10)] == [1, 2, 3, 4, 5]


def test_refusal_and_failure_reach_only_their_submitters(sqlite_log):
    writer = BatchWriter(sqlite_log, max_batch=8)

    async def main():
        ok = await asyncio.gather(writer.submit(commit("a", 1)), writer.submit(commit("b", 1)), return_exceptions=True)
        dup = await asyncio.gather(writer.submit(commit("a", 1)), writer.submit(commit("a", 2)), return_exceptions=True)
        return ok, dup

    ok, dup = asyncio.run(main())
    assert ok == [None, None]
    assert isinstance(dup[0], LogConflictError) and dup[1] is None

    class Broken:
        def write(self, ops):
            raise OSError("disk full")

    broken = BatchWriter(Broken(), max_batch=8)

    async def fail():
        return await asyncio.gather(*(broken.submit(commit(f"z{i}", 1)) for i in range(3)), return_exceptions=True)

    errors = asyncio.run(fail())
    assert all(isinstance(e, OSError) for e in errors) and broken.stats.failed_batches >= 1
