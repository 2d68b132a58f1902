"""Shared model pieces: ALiBi slopes as MPT builds them, the partial-rotary reorder."""

import pytest
import torch
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

from swiftinfer_core.model.layers import alibi_slopes, rotary_perm


@pytest.mark.parametrize("heads", [1, 4, 6, 12, 32])
def test_alibi_slopes_match_mpt(heads):
    bias = build_mpt_alibi_tensor(heads, 5)  # [heads, 1, 5]: slope * (key index - 4)
    torch.testing.assert_close(alibi_slopes(heads, 8.0), -bias[:, 0, 0] / 4)


def test_rotary_perm_pairs_partial_dims_as_the_kernels_do():
    D, R = 80, 20
    perm = rotary_perm(D, R)
    assert sorted(perm.tolist()) == list(range(D))
    # kernel pair (i, i + D/2) holds HF pair (i, i + R/2) for the rotated dims
    for i in range(R // 2):
        assert (perm[i].item(), perm[i + D // 2].item()) == (i, i + R // 2)
    assert set(perm[R // 2 : D // 2].tolist()) | set(perm[D // 2 + R // 2 :].tolist()) == set(range(R, D))
    with pytest.raises(ValueError, match="even"):
        rotary_perm(64, 21)
