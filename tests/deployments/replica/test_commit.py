"""deployments/replica/commit.py: a replica's commits group-committed to a real
directory actor (SQLite log) on the shared local Ray cluster: under concurrency one
call carries several, each commit is answered on its own (a refused one does not
fail the others), and a directory restarted under them logs every turn exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray

from deployments.messages import Commit
from deployments.replica.commit import CommitBatcher
from deployments.sessions.directory import directory_handle
from message_factories import committed_turn, session_record


@pytest.fixture
def directory(cluster, tmp_path):
    spec = {"name": f"dir-commit-{uuid.uuid4().hex[:6]}", "log": {"backend": "sqlite", "path": str(tmp_path / "dir.sqlite3")},
            "lease_stale_s": 30.0, "lease_timeout_s": 60.0}
    handle = directory_handle(spec)
    yield handle
    ray.kill(handle, no_restart=True)


async def _turn(d, batcher: CommitBatcher, sid: str, rid: str, key: str) -> bool:
    grant = await d.begin_turn.remote(sid, rid, None)
    return await batcher.commit(Commit(sid, grant.seq, session_record(sid, grant.seq + 1, (1, 2, 3)), None,
                                       committed_turn(key, f"reply {key}")))


async def _round(d, batcher: CommitBatcher, keys: dict[str, str], stale: frozenset = frozenset()) -> list:
    """Leases for every session, then their commits all at once (``stale``: sent at a seq already past)."""
    grants = await asyncio.gather(*(d.begin_turn.remote(sid, "r1", None) for sid in keys))
    return await asyncio.gather(*(
        batcher.commit(Commit(sid, g.seq - (sid in stale), session_record(sid, g.seq + 1, (1, 2, 3)), None,
                              committed_turn(key, f"reply {key}")))
        for (sid, key), g in zip(keys.items(), grants)))


def test_concurrent_commits_share_calls_and_each_gets_its_own_answer(directory):
    """24 sessions' commits of one round queued together leave in one call; the
    commit at a stale seq is refused alone, the others of its call are logged."""
    d = directory
    sids = [f"s{i}" for i in range(24)]

    async def run():
        b = CommitBatcher(d, "r1")
        answers = [await _round(d, b, {sid: f"{sid}-{r}" for sid in sids}) for r in range(3)]
        last = await _round(d, b, {sid: f"{sid}-3" for sid in sids}, stale=frozenset({"s0"}))
        await d.end_turn.remote("s0", "r1")
        return b.calls, answers, last

    calls, answers, last = asyncio.run(run())
    assert all(all(a) for a in answers)
    assert last[0] is False and all(last[1:])
    assert calls == 4, calls  # one call per round of 24 commits
    for i in range(24):
        keys = [t.turn_key for t in ray.get(d.turns.remote(f"s{i}", 0, 10))]
        assert keys == [f"s{i}-{r}" for r in range(4 if i else 3)], keys


def test_a_directory_restarted_under_the_batch_logs_each_turn_once(directory):
    """Second turns committed while the directory restarts: it reloads the first turns from
    the log (no leases), the batch is sent again until it answers, every turn logged once."""
    d = directory

    async def run():
        b = CommitBatcher(d, "r1", retry_s=60.0)
        assert all(await asyncio.gather(*(_turn(d, b, f"k{i}", "r1", f"t{i}-0") for i in range(12))))
        grants = [await d.begin_turn.remote(f"k{i}", "r1", None) for i in range(12)]
        old = (await d.log_stats.remote())["pid"]
        ray.kill(d, no_restart=False)  # Ray restarts it from the log; calls meanwhile fail and are sent again
        ok = await asyncio.gather(*(b.commit(Commit(f"k{i}", g.seq, session_record(f"k{i}", 2), None, committed_turn(f"t{i}-1")))
                                    for i, g in enumerate(grants)))
        return ok, old

    ok, old = asyncio.run(run())
    assert all(ok), ok
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if ray.get(d.log_stats.remote())["pid"] != old:
                break
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.2)
    for i in range(12):
        assert [t.turn_key for t in ray.get(d.turns.remote(f"k{i}", 0, 10))] == [f"t{i}-0", f"t{i}-1"]
