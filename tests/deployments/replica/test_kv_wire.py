"""KV snapshots through the real object store and session directory
(deployments/replica/kv_wire.py, SessionDirectory.hold_kv): bf16 and FP8 caches come
back bit for bit and writable, and outlive the replica that put them (killed here,
as a drained replica exits)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import ray
import torch

from deployments.replica import kv_wire
from deployments.sessions.directory import directory_handle
from message_factories import committed_turn, session_record
from swiftinfer_core.cache.kv_fp8 import Fp8KV
from swiftinfer_core.protocol import KVSnapshot, SessionRecord


def _snapshot(kv) -> KVSnapshot:
    record = SessionRecord("s", [1, 2, 3, 4], list(range(10, 40)), [7], tokens_seen=35, rounds=2)
    return KVSnapshot("fp", record, 35, *kv)


def _cases():
    g = torch.Generator().manual_seed(0)
    bf16 = [torch.randn(4, 3, 132, 64, generator=g).to(torch.bfloat16)[:, :, :128] for _ in range(2)]  # not contiguous
    fp8 = [Fp8KV.quantize(torch.randn(4, 3, 128, 128, generator=g)) for _ in range(2)]
    return {"bf16": bf16, "fp8": fp8}  # each over Ray's 100 KB inlining limit: in the object store


def _same(a, b) -> bool:
    if isinstance(a, Fp8KV):
        return _same(a.data, b.data) and _same(a.scale, b.scale)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_a_snapshot_crosses_the_object_store_exactly_and_outlives_its_sender(cluster, tmp_path, kind):
    d = directory_handle({"name": f"dir-kv-{uuid.uuid4().hex[:6]}", "log": {"backend": "sqlite", "path": str(tmp_path / "d.sqlite3")},
                          "lease_stale_s": 30.0, "lease_timeout_s": 30.0})
    assert ray.get(d.place.remote("s", {"A": 8}, [], False, True)) == "A"
    grant = ray.get(d.begin_turn.remote("s", "A", None))
    assert ray.get(d.commit.remote("s", "A", grant.seq, session_record("s", 1, (1, 2)), None, committed_turn()))
    snap = _snapshot(_cases()[kind])
    class Sender:  # a replica's part, defined here so that Ray ships it by value
        async def leave(self, directory, sid: str, rid: str, seq: int, wire: KVSnapshot) -> bool:
            if wire is None:
                return False
            snap = kv_wire.unpack(wire)  # torch tensors, as the engine exports them
            return await directory.hold_kv.remote(sid, rid, seq, [await kv_wire.put(snap)])

    sender = ray.remote(num_cpus=0)(Sender).remote()
    assert ray.get(sender.leave.remote(d, "s", "A", 1, kv_wire.pack(snap)))
    ray.kill(sender)  # a drained replica exits once its KV is left
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(100):
            ray.get(sender.leave.remote(d, "s", "A", 1, None), timeout=5)  # fails once it is gone
    ray.get(d.release.remote("A"))
    grant = ray.get(d.begin_turn.remote("s", "B", None))
    got = asyncio.run(kv_wire.get(grant.kv))
    assert got.record == snap.record and (got.fingerprint, got.n) == (snap.fingerprint, snap.n)
    assert _same(got.k, snap.k) and _same(got.v, snap.v) and got.nbytes == snap.nbytes
    tensors = [got.k.data, got.k.scale] if kind == "fp8" else [got.k]
    for t in tensors:
        t.view(torch.uint8).reshape(-1)[0] ^= 1  # writable memory of its own, not the store's read-only pages
    assert not _same(got.k, snap.k)
    ray.kill(d, no_restart=True)
