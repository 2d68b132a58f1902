"""Engine churn on the real model (CPU): more conversations than slots, every
session operation a replica uses, invariants checked after every step."""

from bench.engine_stress import Churn, churn


def test_churn_keeps_slots_ids_and_turns_consistent(make_core):
    core = make_core(window=60, max_sessions=3, max_batch_tokens=96, prefill_chunk=40)
    rep = churn(core, Churn(sessions=8, steps=160, max_prompt=30, max_tokens=10, p_turn=0.3, p_rebuild=0.1, p_handover=0.1, seed=1))
    assert rep.failure == "", (rep.failure, rep.failed_batch)
    assert rep.steps == 160 and rep.tokens_generated > 0
    # the run did exercise what it is for
    assert rep.slot_lends > 0 and rep.wrapped_prefills > 0 and rep.max_chunk == 40
    assert rep.rebuilds > 0 and rep.handovers > 0 and rep.aborts > 0 and rep.turns_finished > 20


def test_churn_with_shared_prefixes_keeps_the_same_invariants(make_core):
    """The same churn with prefix templates (engine/prefix_cache.py) in free slots, which the
    churn's conversations take back in LRU order; a new or rebuilt conversation that finds one
    starts from its rows (the chat template's default system prompt, 24 tokens)."""
    core = make_core(window=60, max_sessions=5, max_batch_tokens=96, prefill_chunk=40, prefix_cache_slots=2, prefix_cache_min_tokens=8)
    rep = churn(core, Churn(sessions=8, steps=160, max_prompt=30, max_tokens=10, p_turn=0.3, p_rebuild=0.1, p_handover=0.1, seed=1))
    assert rep.failure == "", (rep.failure, rep.failed_batch)
    assert rep.steps == 160 and rep.turns_finished > 20 and rep.slot_lends > 0
    st = core.stats()
    assert st.prefix_hits >= 2 and st.prefix_tokens >= 8 * st.prefix_hits


def test_churn_with_a_system_prompt_longer_than_the_cache(make_core):
    """New conversations open with a shared system message longer than the cache (64 rows):
    their prefills stop where they share it and leave the whole slot as a template, which
    later new conversations copy, all under the same churn and invariants."""
    core = make_core(window=60, max_sessions=5, max_batch_tokens=96, prefill_chunk=40, prefix_cache_slots=2, prefix_cache_min_tokens=8)
    rep = churn(core, Churn(sessions=8, steps=160, max_prompt=20, max_tokens=10, p_turn=0.3, p_close=0.05, p_rebuild=0.1,
                            p_handover=0.1, system_words=70, seed=2))
    assert rep.failure == "", (rep.failure, rep.failed_batch)
    assert rep.steps == 160 and rep.turns_finished > 20 and rep.closes > 0
    st = core.stats()
    assert st.prefix_hits >= 2 and st.prefix_tokens > 64 * st.prefix_hits  # whole wrapped slots were reused
