"""write_cache.write_kv vs reference.write_cache_ref: survivors land in their
ring rows, nothing else changes (chunks longer than the window, the sink
boundary, padding rows with slot -1)."""

from __future__ import annotations

import random

import torch

from kernels_naive import fresh_seed
from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.kernels.batch import AttnBatch
from swiftinfer_core.kernels.reference import write_cache_ref
from swiftinfer_core.kernels.write_cache import write_kv


def test_write_kv_matches_reference(dev):
    seed = fresh_seed()
    for layout in (StreamLayout(4, 8), StreamLayout(0, 8)):
        seqs = [(0, 3), (0, 30), (2, 5), (9, 1), (13, 9), (987_654, 20), (40, 0)]
        random.shuffle(seqs)
        B = len(seqs)
        slots = random.sample(range(B + 1), B)
        starts, q_lens = [n for n, _ in seqs], [c for _, c in seqs]
        T = sum(q_lens)
        kn, vn = torch.randn(T, 3, 64), torch.randn(T, 3, 64)
        kc = torch.randn(B + 1, 3, layout.capacity, 64)
        vc = torch.randn_like(kc)
        want_k, want_v = kc.clone(), vc.clone()
        write_cache_ref(kn, vn, want_k, want_v, AttnBatch.build(slots, starts, q_lens, "cpu"), layout)
        # one padding row (slot -1) in the launch must write nothing
        pad_slots = slots + [-1]
        pad_starts, pad_lens = starts + [5], q_lens + [2]
        kn2, vn2 = torch.cat([kn, torch.randn(2, 3, 64)]), torch.cat([vn, torch.randn(2, 3, 64)])
        batch = AttnBatch.build(pad_slots, pad_starts, pad_lens, dev)
        tok_seq = torch.tensor([i for i, c in enumerate(pad_lens) for _ in range(c)], dtype=torch.int32, device=dev)
        kcd, vcd = kc.to(dev), vc.to(dev)
        write_kv(kn2.to(dev), vn2.to(dev), kcd, vcd, tok_seq, batch.slots, batch.starts, batch.cu_seqlens, layout.sinks, layout.window)
        assert torch.equal(kcd.cpu(), want_k), f"seed {seed}"
        assert torch.equal(vcd.cpu(), want_v), f"seed {seed}"
