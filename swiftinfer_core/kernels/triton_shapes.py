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

import functools
import os

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


def fit_tiles(d_pad: int, elem_bytes: int, q_rows: int, block_n: int, stages: int, smem_bytes: int | None) -> tuple[int, int]:
    """(block_n, stages) whose tiles fit ``smem_bytes`` of shared memory (None: no limit,
    the interpreter). Triton holds the query tile [q_rows, d_pad] and ``stages`` buffers of
    the key and value tiles [block_n, d_pad], plus scratch the size of the query tile (layout
    conversions: prefill at 64 x 64 x 3 stages, head_dim 256, took 448 KiB in float32 and
    240 KiB in bf16 on an H200, whose blocks get 227). Fewer stages first (down to 2), then
    narrower key tiles, then no pipelining; the requested tiles stand wherever they fit."""
    def need(bn: int, st: int) -> int:
        return (2 * q_rows + 2 * st * bn) * d_pad * elem_bytes

    while smem_bytes is not None and need(block_n, stages) > smem_bytes:
        if stages > 2:
            stages -= 1
        elif block_n > 16:
            block_n //= 2
        elif stages > 1:
            stages -= 1
        else:
            break
    return block_n, stages


def max_shared_memory(device) -> int | None:
    """Shared memory a block of a native Triton kernel may use on ``device``; None on the
    CPU (the interpreter has no such limit)."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return _device_smem(device.index)


@functools.cache
def _device_smem(index: int | None) -> int:
    import torch
    from triton.runtime import driver

    return driver.active.utils.get_device_properties(torch.cuda.current_device() if index is None else index)["max_shared_mem"]
