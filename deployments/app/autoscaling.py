"""Autoscaling on conversations, not only on requests.

Serve's default policy scales on ongoing requests. For endless conversations
that is not enough: between turns a conversation sends nothing, yet its KV
cache occupies a slot. This policy takes the largest of three demands:

- requests:  ongoing / ``target_ongoing_requests``            (Serve's own rule)
- sessions:  sessions active within ``active_window_s`` / ``target_active_sessions``
- KV pool:   current replicas * mean(kv_use) / ``target_kv_use``

The replicas publish ``active_sessions`` and ``kv_use`` through
``record_autoscaling_stats``; Serve averages them over ``look_back_period_s``
and applies min/max bounds and up/down delays around this function. Idle
conversations do not hold replicas up: they are rebuilt from their records.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext


class SessionAwarePolicy:
    """Class policy: Serve instantiates it once with ``policy_kwargs``."""

    def __init__(self, target_ongoing_requests: float, target_active_sessions: float, target_kv_use: float):
        self.target_ongoing_requests = float(target_ongoing_requests)
        self.target_active_sessions = float(target_active_sessions)
        self.target_kv_use = float(target_kv_use)

    def demand(self, current: int, ongoing: float, metrics: dict[str, dict[Any, float]]) -> dict[str, float]:
        """Replicas each signal asks for. ``metrics``: metric -> replica -> value."""
        active = sum(metrics.get("active_sessions", {}).values())
        kv = list(metrics.get("kv_use", {}).values())
        kv_demand = current * (sum(kv) / len(kv)) / self.target_kv_use if kv else 0.0
        return {
            "requests": ongoing / self.target_ongoing_requests,
            "sessions": active / self.target_active_sessions,
            "kv": kv_demand,
        }

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        if ctx.current_num_replicas == 0:  # cold start: Serve's wrapper scales up on the first request
            return ctx.target_num_replicas, {}
        metrics = ctx.aggregated_metrics or {}
        want = self.demand(ctx.current_num_replicas, ctx.total_num_requests, metrics)
        desired = math.ceil(max(want.values()) - 1e-9)
        reporting = set(metrics.get("active_sessions", {}))
        if not set(ctx.running_replicas) <= reporting:
            # A replica's session metrics are missing (just started, or late): never
            # shrink on partial data; conversations would be moved for nothing.
            desired = max(desired, ctx.current_num_replicas)
        return desired, {"last_demand": want}


def policy_config(target_ongoing_requests: float, target_active_sessions: float, target_kv_use: float) -> dict:
    """The ``autoscaling_config.policy`` entry for Serve."""
    return {
        "policy_function": SessionAwarePolicy,  # Serve pickles the class it is given
        "policy_kwargs": {
            "target_ongoing_requests": target_ongoing_requests,
            "target_active_sessions": target_active_sessions,
            "target_kv_use": target_kv_use,
        },
    }
