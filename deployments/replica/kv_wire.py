"""A ``KVSnapshot`` on its way between replicas through the object store.

A drain or a rebalance leaves a session's KV with the directory for its next
owner: at 7B and 4+1020, 512 MiB a conversation. Pickled as torch tensors, that
held the GIL for about 2 s in all on the CI-class box (dumps 0.65 s on the
sending replica's event loop, where every stream of the replica stood still;
0.32 s reading the argument on the directory's one event loop, which serves
every turn's lease and commit; 0.33 + 0.69 s on the receiving replica).

Here the tensors travel as uint8 numpy views (``WireTensor``), which Ray stores
out of band: the replica's ``ray.put`` runs in a worker thread (0.08 s, another
Python thread kept 58% of its rate), the directory reads the object in place
(6 ms) and puts its own copy from a thread (a drained replica's objects die with
it; Ray 2.56 removed ``ray.put(..., _owner=)``), and the next replica maps it and
clones it into tensors of its own (0.20 s, mostly outside the GIL). 0.37 s in all
against 2.13 s: ``bench/kv_handover_cost.py``, ``bench/results/kv_handover_cost.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import ray
import torch

from swiftinfer_core.protocol import KVSnapshot


@dataclass(frozen=True)
class WireTensor:
    raw: np.ndarray  # [nbytes] uint8, the tensor's bytes in row-major order
    dtype: torch.dtype
    shape: tuple[int, ...]


def _map(x, f, kind):
    """``x`` with every ``kind`` inside it (itself, or a dataclass field: cache/kv_fp8.Fp8KV) replaced by ``f(.)``."""
    if isinstance(x, kind):
        return f(x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{fl.name: _map(getattr(x, fl.name), f, kind) for fl in dataclasses.fields(x)})
    return x


def _pack_tensor(t: torch.Tensor) -> WireTensor:
    c = t.detach().to("cpu").contiguous()
    return WireTensor(c.reshape(-1).view(torch.uint8).numpy(), c.dtype, tuple(c.shape))


def _unpack_tensor(w: WireTensor) -> torch.Tensor:
    with warnings.catch_warnings():  # the object store's pages are read-only: cloned below
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.from_numpy(w.raw)
    return raw.view(w.dtype).reshape(w.shape).clone()


def pack(snap: KVSnapshot) -> KVSnapshot:
    """``snap`` with its tensors as ``WireTensor``s (views: no copy)."""
    return dataclasses.replace(snap, k=_map(snap.k, _pack_tensor, torch.Tensor), v=_map(snap.v, _pack_tensor, torch.Tensor))


def unpack(wire: KVSnapshot) -> KVSnapshot:
    """The snapshot ``pack`` made, with writable tensors of its own (one copy, outside the GIL)."""
    return dataclasses.replace(wire, k=_map(wire.k, _unpack_tensor, WireTensor), v=_map(wire.v, _unpack_tensor, WireTensor))


async def put(snap: KVSnapshot) -> ray.ObjectRef:
    """``snap`` in the object store (owned by this process), off the event loop."""
    return await asyncio.to_thread(lambda: ray.put(pack(snap)))


async def get(ref: ray.ObjectRef) -> KVSnapshot:
    return await asyncio.to_thread(unpack, await ref)
