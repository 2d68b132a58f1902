"""Which heads and MLP rows each tensor-parallel rank holds: ``shard_plans(args, tp)``.

Every ``tp`` from 1 to the number of query heads is valid; the layout is:

* ``tp <= kv_heads``: whole KV groups per rank (a group is one KV head and the
  ``g = heads / kv_heads`` query heads that read it). ``kv_heads % tp != 0``
  is allowed and uneven: SmolLM2 (9 heads, 3 groups) at tp=2 gives 2+1 groups.
* ``tp > kv_heads``: each KV head is replicated on the ranks that share its
  group (8 KV heads on 16 ranks: every KV head on 2 ranks, 2 query heads each);
  a group's query heads are split over its ranks (unevenly if they don't divide).
* ``tp > heads``: invalid (a rank would hold no head) -> InvalidRequestError
  naming the valid sizes.

A rank's query heads never straddle two groups unless it holds both groups
whole, so local query head j always reads local KV head j // (hq / hkv) — the
same rule the attention kernels use on one device. MLP rows are split evenly
(sizes differ by at most one). Uneven sizes are correct but the rank with the
largest share sets the step time; ``even_tp_sizes`` lists the balanced ones.
"""

from __future__ import annotations

from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.model.llama import ShardPlan
from swiftinfer_core.model.loader import ModelArgs


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in ``parts`` contiguous ranges whose sizes differ by at most one (larger first)."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (1 if i < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _head_ranges(heads: int, kv_heads: int, tp: int) -> list[tuple[int, int, int, int]]:
    """(q_lo, q_hi, kv_lo, kv_hi) per rank."""
    g = heads // kv_heads
    if tp <= kv_heads:
        return [(lo * g, hi * g, lo, hi) for lo, hi in _split(kv_heads, tp)]
    out = []
    for kv, (r_lo, r_hi) in enumerate(_split(tp, kv_heads)):  # ranks sharing KV head ``kv``
        for q_lo, q_hi in _split(g, r_hi - r_lo):
            out.append((kv * g + q_lo, kv * g + q_hi, kv, kv + 1))
    return out


def valid_tp_sizes(args: ModelArgs) -> list[int]:
    return list(range(1, args.num_heads + 1))


def even_tp_sizes(args: ModelArgs) -> list[int]:
    """Sizes where every rank holds the same number of query and KV heads."""
    return [tp for tp in valid_tp_sizes(args) if is_even(shard_plans(args, tp))]


def describe_sizes(args: ModelArgs) -> str:
    return (
        f"valid tp sizes for {args.name} ({args.num_heads} query heads, {args.num_kv_heads} KV heads) "
        f"are 1..{args.num_heads}; evenly balanced: {', '.join(map(str, even_tp_sizes(args)))}"
    )


def shard_plans(args: ModelArgs, tp_size: int) -> list[ShardPlan]:
    """One ShardPlan per rank (``all_reduce`` left unset: the rank binds its own)."""
    if args.num_heads % args.num_kv_heads:
        raise InvalidRequestError(f"{args.name}: {args.num_heads} query heads are not a multiple of {args.num_kv_heads} KV heads")
    if not 1 <= tp_size <= args.num_heads:
        raise InvalidRequestError(f"tp_size {tp_size} is not valid: {describe_sizes(args)}")
    if tp_size > args.intermediate_size:
        raise InvalidRequestError(f"tp_size {tp_size} exceeds the MLP width {args.intermediate_size}")
    heads = _head_ranges(args.num_heads, args.num_kv_heads, tp_size)
    rows = _split(args.intermediate_size, tp_size)
    return [ShardPlan(q_lo, q_hi, kv_lo, kv_hi, i_lo, i_hi) for (q_lo, q_hi, kv_lo, kv_hi), (i_lo, i_hi) in zip(heads, rows)]


def is_even(plans: list[ShardPlan]) -> bool:
    """Same head counts on every rank (MLP rows always differ by at most one)."""
    return len({(p.q_hi - p.q_lo, p.kv_hi - p.kv_lo) for p in plans}) == 1
