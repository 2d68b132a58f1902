import pytest
import torch

from swiftinfer_core.cache.layout import StreamLayout
from swiftinfer_core.cache.pool import KVPool, SlotAllocator


def test_slots_are_handed_out_lowest_first_and_reused():
    a = SlotAllocator(3)
    assert [a.allocate(), a.allocate(), a.allocate(), a.allocate()] == [0, 1, 2, None]
    a.release(1)
    a.release(0)
    assert (a.free, a.used) == (2, 1)
    assert [a.allocate(), a.allocate()] == [0, 1]
    with pytest.raises(KeyError):
        a.release(7)


def test_pool_shapes_and_slot_round_trip():
    lay = StreamLayout(2, 6)
    pool = KVPool(lay, num_layers=3, num_slots=2, kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu")
    assert pool.k[0].shape == (2, 2, 8, 4)
    assert KVPool.bytes_per_slot(lay, 3, 2, 4, torch.float32) == 2 * 3 * 2 * 8 * 4 * 4
    for layer in range(3):
        pool.k[layer][1].normal_()
        pool.v[layer][1].normal_()
    k, v = pool.export_slot(1)
    pool.import_slot(0, k, v)
    for layer in range(3):
        assert torch.equal(pool.k[layer][0], pool.k[layer][1])
        assert torch.equal(pool.v[layer][0], pool.v[layer][1])


def test_copy_slot_copies_the_rows_in_use_exactly_and_nothing_else():
    lay = StreamLayout(2, 6)
    pool = KVPool(lay, num_layers=2, num_slots=3, kv_heads=2, head_dim=4, dtype=torch.float32, device="cpu")
    for layer in range(2):
        pool.k[layer].normal_()
        pool.v[layer].normal_()
    before = [t.clone() for t in pool.k + pool.v]
    pool.copy_slot(2, 0, rows=5)
    k, v = pool.export_slot(2, rows=5)  # what a migration would carry
    for layer in range(2):
        assert torch.equal(pool.k[layer][0, :, :5], k[layer]) and torch.equal(pool.v[layer][0, :, :5], v[layer])
        assert torch.equal(pool.k[layer][0, :, 5:], before[layer][0, :, 5:])  # rows past the fill untouched
        assert torch.equal(pool.k[layer][1:], before[layer][1:]) and torch.equal(pool.v[layer][1:], before[2 + layer][1:])
