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
