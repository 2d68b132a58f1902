"""KV pool sizing when engines share one GPU (runner/kv_slots.py shared_kv_budget)."""

import pytest

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.runner.kv_slots import shared_kv_budget

GIB = 1 << 30


def test_two_half_shares_size_the_same_whatever_starts_first():
    total, weights, util = 140 * GIB, 14 * GIB, 0.85
    # first engine: the device is empty but for its weights; second: the first holds its whole share
    first = shared_kv_budget(total - weights, total, weights, 0.5, util)
    first_share = weights + first
    second = shared_kv_budget(total - first_share - weights, total, weights, 0.5, util)
    assert first == second == int(0.5 * total * util) - weights
    assert first_share * 2 <= total * util  # together within the device


def test_a_share_its_weights_fill_or_that_is_not_free_is_refused():
    with pytest.raises(InvalidRequestError, match="used up by its own weights"):
        shared_kv_budget(100 * GIB, 140 * GIB, 60 * GIB, 0.5, 0.85)
    # a third of 140 GiB at 0.85 leaves 25.7 GiB of KV after 14 GiB of weights; others left only 20 free
    with pytest.raises(InvalidRequestError, match="holds more than its share"):
        shared_kv_budget(20 * GIB, 140 * GIB, 14 * GIB, 1 / 3, 0.85)
