"""Warming an engine up: every kernel its first real turns would run, compiled
before they come (Triton compiles on first use), with nothing left behind.
"""

from __future__ import annotations

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.session import TurnState


def warm_up_core(core) -> None:  # core: an EngineCore (core.py imports this module)
    """Compile every kernel the first real turns would (Triton compiles on first
    use: seconds per kernel on a GPU) with two scratch conversations, one
    decoding while the other prefills, so a mixed step runs too; the second
    one samples with temperature and logprobs, ops a greedy turn never runs
    (a GPU run whose clients asked for logprobs had its first 32 turns wait
    ~7 s, served_8b_r1.json; the same stack without logprobs did not: this
    path was the one difference; not yet re-run). Leaves no session, slot,
    counter or prefix template behind."""
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    sampled = SamplingParams(max_tokens=4, ignore_eos=True, temperature=0.8, top_p=0.9, seed=0, logprobs=True, top_logprobs=2)
    counters = core.post.tokens_generated, core.post.tokens_prefilled
    ids = ["__warmup_a__", "__warmup_b__"]
    trace, core.trace = core.trace, None  # compile-time steps would only blur the trace
    try:
        first = core.add_turn(ids[0], [{"role": "user", "content": "warm up"}], params)
        while first.state is not TurnState.DECODE and first.session.turn is first:
            core.step()
        second = core.add_turn(ids[1], [{"role": "user", "content": "warm up " * 40}], sampled)
        while core.scheduler.has_work and (first.session.turn is first or second.session.turn is second):
            core.step()
    finally:
        for sid in ids:
            if sid in core.sessions:
                core.close_session(sid)
        if core.prefix is not None:
            core.prefix.clear()
        core.post.tokens_generated, core.post.tokens_prefilled = counters
        core.trace = trace
