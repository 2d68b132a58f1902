"""Which attention head shapes the Triton kernels (decode_attention.py,
prefill_attention.py) handle, as one check that the attention choice
(runner/build.py make_attention) and the kernels' entry points both call.

* query heads a multiple of KV heads (grouped-query attention: query head j
  reads KV head j // (hq / hkv));
* an even head_dim: RoPE rotates the two halves of each head;
* head_dim <= MAX_HEAD_DIM: one head is one padded register tile.

Importing this module does not import triton.
"""

from __future__ import annotations

MAX_HEAD_DIM = 256


def unsupported_heads(head_dim: int, q_heads: int, kv_heads: int) -> str | None:
    """Why the Triton kernels cannot run these heads, or None when they can."""
    if kv_heads < 1 or q_heads < 1 or q_heads % kv_heads:
        return f"{q_heads} query heads are not a multiple of {kv_heads} KV heads"
    if head_dim % 2:
        return f"head_dim {head_dim} is odd (RoPE rotates the two halves of a head)"
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim {head_dim} exceeds the {MAX_HEAD_DIM} the kernels hold in one tile"
    return None


def check_triton_heads(head_dim: int, q_heads: int, kv_heads: int) -> None:
    """ValueError, naming the reason, unless the Triton kernels handle these heads."""
    why = unsupported_heads(head_dim, q_heads, kv_heads)
    if why is not None:
        raise ValueError(f"Triton attention cannot run this model: {why}")
