"""How many conversations a replica is serving, for the autoscaler's session signal."""

from __future__ import annotations


def active_count(last_turn: dict[str, float], busy: set[str], now: float, window_s: float) -> int:
    """Sessions running a turn now or whose last turn ended within ``window_s``.
    A running session usually has a recent last turn too: it counts once (counting
    both made 48 talking conversations read as 96 on the GPU ramp,
    bench/results/autoscale_7b_r3.json, and held three replicas)."""
    recent = {sid for sid, t in last_turn.items() if now - t <= window_s}
    return len(recent | busy)
