from swiftinfer_core.cache.layout import StreamLayout


def test_paper_example_positions():
    # cache [0,1,2,3,6,7,8] decoding token 9: keys 0..3, 6..9 at positions 0..7
    lay = StreamLayout(sinks=4, window=4)
    # the ring still holds token 5 until token 9 overwrites its row
    assert lay.cached_after(9) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert lay.row(9) == lay.row(5)
    assert lay.attended(9)[:-1] == [0, 1, 2, 3, 6, 7, 8]
    assert lay.attended(9) == [0, 1, 2, 3, 6, 7, 8, 9]
    assert lay.cache_positions(9) == list(range(8))
    assert lay.query_position(9) == 7


def test_ring_rows_and_eviction_order():
    lay = StreamLayout(sinks=2, window=3)
    assert [lay.row(u) for u in range(10)] == [0, 1, 2, 3, 4, 2, 3, 4, 2, 3]
    # token 5 overwrites row 2, which held token 2: the oldest window token is evicted first
    assert lay.cached_after(5) == [0, 1, 2, 3, 4]
    assert lay.cached_after(6) == [0, 1, 3, 4, 5]
    assert [lay.evicted(n) for n in (4, 5, 6, 9)] == [0, 0, 1, 4]
    assert [lay.fill(n) for n in (0, 3, 5, 100)] == [0, 3, 5, 5]


def test_before_eviction_is_dense():
    lay = StreamLayout(sinks=4, window=12)
    for t in range(16):
        assert lay.attended(t) == list(range(t + 1))
        assert lay.query_position(t) == t


def test_no_sinks_is_a_plain_window():
    lay = StreamLayout(sinks=0, window=5)
    assert lay.attended(20) == [16, 17, 18, 19, 20]
    assert lay.query_position(20) == 4


def test_rope_shift_keeps_angles_in_range():
    lay = StreamLayout(sinks=4, window=1020)
    last = 10**6
    shift = lay.rope_shift(last)
    assert last - shift == lay.capacity - 1
    # the oldest window key any query of a 512-token chunk ending at `last` reaches
    assert (last - 511 - lay.window + 1) - shift >= -512
