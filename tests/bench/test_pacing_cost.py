"""bench/pacing_cost.py: its streams deliver every token, and an older pacing.py loads from git."""

import asyncio

from bench import pacing_cost
from deployments.replica import pacing


def test_every_stream_ends_and_chunks_fall_between_one_per_token_and_two_per_stream():
    row = asyncio.run(pacing_cost.one_run(pacing, streams=8, steps=30, step_s=0.002, floor_s=0.02, budget_per_s=1000))
    assert row["tokens"] == 240
    assert 8 * 2 <= row["chunks"] < 240  # first + final of each stream at least; merged, so fewer than tokens
    assert row["us_per_token"] > 0


def test_pacing_of_a_git_revision_runs_beside_the_working_tree():
    old = pacing_cost.pacing_at("HEAD")
    row = asyncio.run(pacing_cost.one_run(old, streams=4, steps=10, step_s=0.001, floor_s=0.0, budget_per_s=0))
    assert row["chunks"] == 40  # no pacing: one chunk per token
