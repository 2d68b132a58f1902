"""Reply lengths per turn for the closed-loop benches (bench/load.py through the
service, bench/engine_batches.py on the engine alone), the same in both.

With one fixed ``max_tokens`` (and ``ignore_eos``) every reply of a round ends on the
same step, so a closed loop's conversations stay in lockstep: each round's turns
arrive together and prefill in one burst, and the first token waits for that burst.
Drawing each turn's length from ``[lo, hi]`` spreads the ends out, as replies of
different lengths do. The draw hashes (conversation index, round), so the engine-alone
run and the served run generate the same tokens turn for turn.
"""

from __future__ import annotations

import zlib


def turn_tokens(lo: int, hi: int | None, conversation: int, round_: int) -> int:
    """Reply length of round ``round_`` of conversation ``conversation``: ``lo`` when ``hi``
    is None or equal to it, else a fixed draw in ``[lo, hi]``."""
    if hi is None or hi == lo:
        return lo
    if hi < lo:
        raise ValueError(f"the longest reply ({hi}) is shorter than the shortest ({lo})")
    return lo + zlib.crc32(f"{conversation}-{round_}".encode()) % (hi - lo + 1)
