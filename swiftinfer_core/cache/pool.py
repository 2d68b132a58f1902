"""One KV pool for every conversation: fixed-size slots of sinks + window rows.

k[layer]: [num_slots, kv_heads, capacity, head_dim], pre-RoPE keys; v likewise.
In ``dtype`` torch.float8_e4m3fn each layer's k/v is a cache/kv_fp8.Fp8KV instead:
e4m3 rows plus one float32 scale per row and KV head (its docstring: why, and the
bytes). It indexes like the tensor, so the methods below are the same for both.
A slot is handed to a conversation for as long as it is resident; sizes are
fixed, so admission is a free-list pop and there is no fragmentation.
"""

from __future__ import annotations

from collections import deque

import torch

from swiftinfer_core.cache import kv_fp8
from swiftinfer_core.cache.layout import StreamLayout


class SlotAllocator:
    """Free list of slot ids; lowest id first, so tests can assert exact ids."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free = deque(range(num_slots))
        self._used: set[int] = set()

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return len(self._used)

    def allocate(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.popleft()
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise KeyError(f"slot {slot} is not allocated")
        self._used.remove(slot)
        # keep the free list sorted so reuse order is deterministic
        self._free.append(slot)
        self._free = deque(sorted(self._free))


class KVPool:
    def __init__(
        self,
        layout: StreamLayout,
        num_layers: int,
        num_slots: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        self.layout = layout
        self.num_slots = num_slots
        shape = (num_slots, kv_heads, layout.capacity, head_dim)
        self.k = [self._layer(shape, dtype, device) for _ in range(num_layers)]
        self.v = [self._layer(shape, dtype, device) for _ in range(num_layers)]
        self.slots = SlotAllocator(num_slots)

    @staticmethod
    def _layer(shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor | kv_fp8.Fp8KV:
        if dtype == kv_fp8.FP8:
            return kv_fp8.Fp8KV.zeros(shape, device)
        return torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_slot(layout: StreamLayout, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """K and V of every layer, in storage ``dtype`` (fp8: the row scales included)."""
        return 2 * num_layers * kv_heads * layout.capacity * kv_fp8.row_bytes(head_dim, dtype)

    def export_slot(self, slot: int, rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """[layers, kv_heads, rows, head_dim] copies of one slot's first ``rows``
        rows (all by default), for migration (fp8: an Fp8KV, the scales with them)."""
        r = self.layout.capacity if rows is None else rows
        return kv_fp8.stack([k[slot, :, :r] for k in self.k]).cpu(), kv_fp8.stack([v[slot, :, :r] for v in self.v]).cpu()

    def import_slot(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Copy exported rows back into the first ``k.shape[2]`` rows of ``slot``.
        Rows of another storage dtype are refused (no silent re-quantisation)."""
        if k.dtype != self.k[0].dtype or v.dtype != self.v[0].dtype:
            raise ValueError(f"KV rows in {k.dtype} cannot be imported into a {self.k[0].dtype} cache")
        rows = k.shape[2]
        for layer in range(len(self.k)):
            self.k[layer][slot, :, :rows].copy_(k[layer])
            self.v[layer][slot, :, :rows].copy_(v[layer])

    def copy_slot(self, src: int, dst: int, rows: int) -> None:
        """Copy the first ``rows`` rows of slot ``src`` into ``dst`` on the pool's
        device (every layer, K and V): ``import_slot(dst, *export_slot(src, rows))``
        without the trip through host memory. A fork of a conversation's cache."""
        for layer in range(len(self.k)):
            self.k[layer][dst, :, :rows].copy_(self.k[layer][src, :, :rows])
            self.v[layer][dst, :, :rows].copy_(self.v[layer][src, :, :rows])
