"""Several choices from one prefill (engine/choices.py) on the real default model:
shared prefill, forks equal to the original, seeds, the session rule, admission,
aborts and slots."""

from __future__ import annotations

import pytest

from swiftinfer_core import InvalidRequestError, SamplingParams
from swiftinfer_core.engine.session import TurnState

USER = [{"role": "user", "content": "Write one short sentence about the sea."}]


def run(core, sid: str, params: SamplingParams, messages=USER):
    """(chunks in order, main turn) of one whole turn, stepping the core."""
    turn = core.add_turn(sid, messages, params)
    chunks = []
    while not chunks or not chunks[-1].final:
        chunks.extend(ev.chunk for ev in core.step())
    return chunks, turn


def by_choice(chunks) -> dict[int, str]:
    out: dict[int, str] = {}
    for c in chunks:
        out[c.index] = out.get(c.index, "") + c.text
    return out


def test_greedy_choices_share_one_prefill_and_equal_a_single_choice(make_core):
    core = make_core(max_sessions=4)
    single, _ = run(core, "one", SamplingParams(max_tokens=12))
    before = core.stats().tokens_prefilled
    chunks, turn = run(core, "three", SamplingParams(max_tokens=12, n=3))
    prompt = len(core.format.first_round(USER))
    # the input once, then its last token once more per extra choice (each into its own copy)
    assert core.stats().tokens_prefilled - before == prompt + 2
    texts = by_choice(chunks)
    assert texts == {0: by_choice(single)[0], 1: by_choice(single)[0], 2: by_choice(single)[0]}
    last = chunks[-1]
    assert last.final and sum(c.final for c in chunks) == 1
    assert sorted(c.index for c in chunks if c.finish_reason) == [0, 1, 2]
    outs = [turn.output_ids] + [f.output_ids for f in turn.choices.forks]
    assert last.usage.prompt_tokens == prompt and last.usage.completion_tokens == sum(map(len, outs))
    assert last.usage.prefilled_tokens == prompt
    # each choice's first chunk tells the input's tokens (a fork its main turn's), before the final chunk does
    firsts = {c.index: c for c in reversed(chunks)}
    assert {i: c.prompt_tokens for i, c in firsts.items()} == {0: prompt, 1: prompt, 2: prompt}
    assert all(c.prompt_tokens is None for c in chunks if firsts[c.index] is not c)
    assert core.pool.slots.free == 4 - 2  # the two sessions keep theirs; the forks' slots are back


def test_seeded_choices_differ_and_choice_i_draws_from_seed_plus_i(make_core):
    core = make_core(max_sessions=4)
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=5, n=3, logprobs=True)
    a, _ = run(core, "a", params)
    b, _ = run(core, "b", params)
    assert by_choice(a) == by_choice(b)  # reproducible
    assert len(set(by_choice(a).values())) >= 2  # distinct streams
    shifted, _ = run(core, "c", params.model_copy(update={"seed": 6, "n": 2}))
    assert by_choice(shifted)[0] == by_choice(a)[1]
    for i in range(3):  # logprobs per choice, one per token
        mine = [c for c in a if c.index == i]
        assert sum(len(c.logprobs) for c in mine) == sum(len(c.token_ids) for c in mine) > 0


def test_on_a_session_choice_zero_continues_the_conversation(make_core):
    core = make_core(max_sessions=4)
    chunks, turn = run(core, "s", SamplingParams(max_tokens=10, temperature=1.0, seed=3, n=3, ignore_eos=True))
    session = core.sessions["s"]
    out = turn.output_ids
    assert session.cached_ids()[-(len(out) - 1):] == out[:-1]  # choice 0's reply, fed
    assert session.pending == core.format.after_reply(out[-1], core.eos_ids)
    assert chunks[-1].record == session.record() and session.rounds == 1 and session.turn is None
    assert {f.index for f in turn.choices.forks} == {1, 2} and all(f.output_ids != out for f in turn.choices.forks)
    assert session.generated_tokens == len(out)  # the other choices are not the session's
    assert set(core.sessions) == {"s"} and core.pool.slots.free == 3
    n_before = session.n
    more, _ = run(core, "s", SamplingParams(max_tokens=4), [{"role": "user", "content": "Again."}])
    assert session.rounds == 2 and more[-1].usage.cached_tokens == core.layout.fill(n_before)  # warm: choice 0's cache


def test_n_beyond_the_pool_is_refused_naming_n(make_core):
    core = make_core(max_sessions=2)
    with pytest.raises(InvalidRequestError, match=r"^n: 3 choices need 3 cache slots"):
        core.add_turn("x", USER, SamplingParams(n=3))
    assert "x" not in core.sessions and core.pool.slots.free == 2


def test_a_turn_with_choices_waits_for_its_slots_then_takes_idle_ones(make_core):
    core = make_core(max_sessions=3)
    run(core, "idle", SamplingParams(max_tokens=2))
    busy = core.add_turn("busy", USER, SamplingParams(max_tokens=6, ignore_eos=True))
    core.step()
    many = core.add_turn("many", USER, SamplingParams(max_tokens=3, n=3))  # needs 3: 1 free + 1 idle
    core.step()
    assert many.state is TurnState.WAITING and core.sessions["idle"].slot is not None
    while busy.state is not TurnState.DONE:
        core.step()
    while many.state is TurnState.WAITING:
        core.step()
    assert core.sessions["idle"].slot is None and core.sessions["busy"].slot is None  # both gave theirs up
    while many.state is not TurnState.DONE:
        core.step()
    assert len(many.choices.forks) == 2 and all(f.output_ids for f in many.choices.forks)


def test_aborting_the_turn_ends_every_choice_and_frees_their_slots(make_core):
    core = make_core(max_sessions=4)
    turn = core.add_turn("s", USER, SamplingParams(max_tokens=50, ignore_eos=True, n=3))
    while not turn.output_ids:
        core.step()
    forks = turn.choices.forks
    assert len(forks) == 2 and core.pool.slots.free == 1
    core.abort(turn)
    assert all(t.state is TurnState.DONE for t in [turn, *forks]) and not core.scheduler.has_work
    assert core.pool.slots.free == 3 and core.sessions["s"].turn is None
    # before the fork too: the reserved slots come back
    early = core.add_turn("t", USER, SamplingParams(max_tokens=5, n=3))
    core.step()  # admitted, the input but its last token fed; the fork is the next step's
    assert early.choices.reserved and not early.choices.forks and core.pool.slots.free == 0
    core.abort(early)
    assert core.pool.slots.free == 2 and not early.choices.forks and not core.scheduler.has_work


def test_a_resident_session_with_choices_waits_for_its_extra_slot(make_core):
    core = make_core(max_sessions=2)
    run(core, "a", SamplingParams(max_tokens=2))  # resident and idle
    busy = core.add_turn("b", USER, SamplingParams(max_tokens=8, ignore_eos=True))
    core.step()
    two = core.add_turn("a", [{"role": "user", "content": "More."}], SamplingParams(max_tokens=3, n=2))  # needs one slot more: none
    core.step()
    assert two.state is TurnState.WAITING and not two.choices.reserved and core.sessions["a"].slot is not None
    while two.state is not TurnState.DONE:
        core.step()
    assert busy.state is TurnState.DONE and core.sessions["b"].slot is None  # b, idle by then, lent its slot
    assert len(two.choices.forks) == 1 and core.pool.slots.free == 1


def test_each_choice_stops_at_its_own_stop_string(make_core):
    core = make_core(max_sessions=4)
    chunks, turn = run(core, "s", SamplingParams(max_tokens=40, temperature=1.0, seed=21, n=3, stop=[" the"]))
    texts = by_choice(chunks)
    reasons = {c.index: c.finish_reason for c in chunks if c.finish_reason is not None}
    by_string = 0
    for i, t in enumerate([turn, *turn.choices.forks]):
        full = core.tokenizer.decode(t.output_ids)
        assert " the" not in texts[i]
        if reasons[i] == "stop" and t.output_ids[-1] not in core.eos_ids:  # stopped by the string: cut right before it
            assert full.startswith(texts[i]) and full[len(texts[i]):].startswith(" the")
            by_string += 1
    assert by_string >= 1
    assert len({len(t.output_ids) for t in [turn, *turn.choices.forks]}) > 1  # they ended at different points
