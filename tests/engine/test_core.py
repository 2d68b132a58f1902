"""EngineCore on the real model: rounds, prefill accounting, errors, slots, records."""

import pytest

from swiftinfer_core import (
    InvalidRequestError,
    PromptTooLongError,
    SamplingParams,
    SessionBusyError,
    SessionNotFoundError,
)
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.engine.core import EngineCore

GREEDY = SamplingParams(max_tokens=12)


def run_turn(core: EngineCore, sid: str, text: str, params=GREEDY, role="user"):
    turn = core.add_turn(sid, [{"role": role, "content": text}], params)
    chunks = []
    while True:
        for ev in core.step():
            assert ev.turn is turn
            chunks.append(ev.chunk)
        if chunks and chunks[-1].finish_reason:
            return "".join(c.text for c in chunks), chunks[-1]


def test_three_rounds_prefill_only_the_new_turns(make_core):
    core = make_core(window=60)
    fed_before = core.stats().tokens_prefilled
    text1, last1 = run_turn(core, "a", "What is the capital of France?")
    first = core.format.first_round([{"role": "user", "content": "What is the capital of France?"}])
    assert last1.usage.prefilled_tokens == len(first) == core.stats().tokens_prefilled - fed_before
    for msg in ("And of Italy?", "Name one river there."):
        pending = list(core.sessions["a"].pending)
        before = core.stats().tokens_prefilled
        _, last = run_turn(core, "a", msg)
        new = core.format.next_round([{"role": "user", "content": msg}])
        # exactly: the previous reply's last token + template closing, then the new turn; no history
        assert core.stats().tokens_prefilled - before == len(pending) + len(new) == last.usage.prefilled_tokens
        assert last.usage.prompt_tokens == len(new)
        assert last.usage.cached_tokens > 0
    st = core.session_stats("a")
    assert st.rounds == 3 and st.tokens_seen > st.cache_fill == st.capacity == 64 and st.evictions > 0
    assert "Paris" in text1


def test_greedy_is_deterministic_and_sampling_is_seeded(make_core):
    core = make_core()
    a, _ = run_turn(core, "g1", "Tell me a story.")
    b, _ = run_turn(core, "g2", "Tell me a story.")
    assert a == b
    p = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    x, _ = run_turn(core, "s1", "Tell me a story.", p)
    y, _ = run_turn(core, "s2", "Tell me a story.", p)
    assert x == y


def test_max_tokens_and_stop_strings(make_core):
    core = make_core()
    _, last = run_turn(core, "m", "Count from one to fifty in words.", SamplingParams(max_tokens=3))
    assert last.finish_reason == "length" and last.usage.completion_tokens == 3
    full, _ = run_turn(core, "n", "What is the capital of France?", SamplingParams(max_tokens=12))
    stop = full.split()[2]
    cut, last = run_turn(core, "o", "What is the capital of France?", SamplingParams(max_tokens=12, stop=[stop]))
    assert last.finish_reason == "stop" and stop not in cut and full.startswith(cut)


@pytest.mark.parametrize(
    "messages, error",
    [
        ([], InvalidRequestError),
        ([{"role": "wizard", "content": "hi"}], InvalidRequestError),
        ([{"role": "user", "content": 5}], InvalidRequestError),
        ([{"role": "user"}], InvalidRequestError),
        ("hello", InvalidRequestError),
    ],
)
def test_bad_messages(make_core, messages, error):
    core = make_core()
    with pytest.raises(error):
        core.add_turn("x", messages, GREEDY)
    assert "x" not in core.sessions


def test_bad_config_and_params():
    with pytest.raises(InvalidRequestError, match="sink_tokens"):
        EngineConfig(sink_tokens=8, window=8)
    for bad in ({"max_tokens": 0}, {"max_tokens": -3}, {"temperature": -1}, {"top_p": 0}, {"stop": [""]}, {"bogus": 1}):
        with pytest.raises(InvalidRequestError):
            SamplingParams(**bad)
    assert issubclass(InvalidRequestError, ValueError)


def test_too_long_prompt_and_bad_session_ids(make_core):
    core = make_core(max_turn_tokens=16)
    with pytest.raises(PromptTooLongError, match="limit is 16"):
        core.add_turn("long", [{"role": "user", "content": "word " * 50}], GREEDY)
    for sid in ("", "a" * 129, "has space", None):
        with pytest.raises(InvalidRequestError):
            core.add_turn(sid, [{"role": "user", "content": "hi"}], GREEDY)
    with pytest.raises(SessionNotFoundError):
        core.session_stats("nope")


def test_second_concurrent_turn_is_refused(make_core):
    core = make_core()
    core.add_turn("busy", [{"role": "user", "content": "hi"}], GREEDY)
    with pytest.raises(SessionBusyError):
        core.add_turn("busy", [{"role": "user", "content": "again"}], GREEDY)


def test_full_pool_rebuilds_idle_session_from_ids(make_core):
    core = make_core(max_sessions=1)
    run_turn(core, "p", "What is the capital of France?")
    assert core.sessions["p"].slot == 0
    run_turn(core, "q", "What is the capital of Spain?")  # takes p's slot
    assert core.sessions["p"].slot is None and core.sessions["q"].slot == 0
    text, last = run_turn(core, "p", "And of Italy?")
    st = core.session_stats("p")
    assert st.recovered and st.resident and st.rounds == 2 and text


def test_export_import_moves_a_session(make_core):
    a, b = make_core(), make_core()
    run_turn(a, "mv", "What is the capital of France?")
    rec = a.export_session("mv")
    assert len(rec.sink_ids) == 4 and rec.window_ids and rec.pending_ids
    b.import_session(rec)
    text, last = run_turn(b, "mv", "And of Germany?")
    # the rebuild re-runs sinks + window tail: prefilled covers them plus the new turn
    assert last.usage.prefilled_tokens == len(rec.sink_ids) + len(rec.window_ids) + len(rec.pending_ids) + last.usage.prompt_tokens
    assert b.session_stats("mv").recovered and b.session_stats("mv").rounds == 2
    a.close_session("mv")
    assert not a.sessions and a.pool.slots.free == a.pool.num_slots


def test_extreme_sampling_values_do_not_fail_the_batch(make_core):
    core = make_core()
    ok = core.add_turn("fine", [{"role": "user", "content": "Hello"}], SamplingParams(max_tokens=4))
    for i, p in enumerate([SamplingParams(max_tokens=4, temperature=1e-300, seed=1),
                           SamplingParams(max_tokens=4, temperature=5.0, top_p=1e-9, seed=2),
                           SamplingParams(max_tokens=4, temperature=1e-30, top_k=1, seed=3)]):
        core.add_turn(f"odd{i}", [{"role": "user", "content": "0"}], p)
    done = set()
    for _ in range(40):
        for ev in core.step():
            if ev.chunk.finish_reason:
                done.add(ev.turn.session.id)
        if len(done) == 4:
            break
    assert done == {"fine", "odd0", "odd1", "odd2"} and ok.state.name == "DONE"


def test_every_sampled_id_is_streamed_once_even_when_its_text_is_incomplete(shape_dir):
    """Random weights sample byte-level tokens whose text is an incomplete UTF-8
    sequence; their ids go out with the chunk that completes the text (they were
    dropped before: a client counting ids saw fewer than were generated)."""
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.engine.core import EngineCore

    tiny = shape_dir(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32)
    core = EngineCore(EngineConfig(model=str(tiny), load_format="random", device="cpu", window=60, max_sessions=2, seed=3))
    params = SamplingParams(max_tokens=120, temperature=1.0, seed=7, ignore_eos=True)
    turn = core.add_turn("a", [{"role": "user", "content": "hi"}], params)
    chunks = []
    while turn.session.turn is turn:
        chunks += [ev.chunk for ev in core.step()]
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == turn.output_ids and len(ids) == 120
    assert any(len(c.token_ids) > 1 for c in chunks)  # some ids waited for their text


def test_token_ids_past_the_models_vocabulary_are_refused_not_run(shape_dir):
    """A tokenizer larger than the model's embedding (a random-weight shape with a
    smaller vocabulary) must give a clear error, not an out-of-bounds gather (a
    device-side assert that ends the engine on a GPU)."""
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.engine.core import EngineCore

    small = shape_dir(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32)
    core = EngineCore(EngineConfig(model=str(small), load_format="random", device="cpu", window=60, max_sessions=2))
    with pytest.raises(InvalidRequestError, match="outside the model's vocabulary of 300"):
        core.add_turn("a", [{"role": "user", "content": "Thoroughly incomprehensible"}], SamplingParams(max_tokens=2))
    assert "a" not in core.sessions


def test_warm_up_leaves_no_session_slot_or_count_behind(make_core):
    core = make_core(max_sessions=1)  # the second scratch turn must take the first one's slot
    before = core.stats()
    core.warm_up()
    after = core.stats()
    assert core.sessions == {} and not core.scheduler.has_work
    assert after == before and after.free_slots == after.total_slots == 1
    out = core.add_turn("real", [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))
    while core.scheduler.has_work:
        core.step()
    assert out.output_ids and core.stats().tokens_generated == 2


def test_a_turn_with_an_expected_record_starts_only_on_that_resident_copy(make_core):
    from swiftinfer_core.errors import StaleSessionError

    core = make_core(max_sessions=1)
    run = _turn_runner(core)
    with pytest.raises(StaleSessionError):  # unknown here
        run("a", "hi", expect=core.session("a").record() if "a" in core.sessions else _record("a"))
    run("a", "Name a fruit.")
    record = core.export_session("a")
    stale = _record("a")
    with pytest.raises(StaleSessionError):  # another record
        run("a", "More.", expect=stale)
    assert core.export_session("a") == record and not core.scheduler.has_work  # nothing changed
    assert run("a", "And a colour?", expect=record).output_ids  # the exact resident copy: it runs
    run("b", "Take the slot.")  # one slot: "a" gives it up (its ids stay)
    with pytest.raises(StaleSessionError):  # same record, not resident
        run("a", "Again.", expect=core.export_session("a"))


def test_a_new_start_runs_only_where_the_engine_holds_no_copy(make_core):
    import pickle

    from swiftinfer_core.errors import StaleSessionError
    from swiftinfer_core.protocol import ABSENT

    core = make_core(max_sessions=2)
    run = _turn_runner(core)
    assert run("a", "Name a fruit.", expect=ABSENT).output_ids  # no copy: it runs as the first round
    record = core.export_session("a")
    with pytest.raises(StaleSessionError):  # a copy here (a leftover, for a new start): nothing changes
        run("a", "Start over.", expect=pickle.loads(pickle.dumps(ABSENT)))  # as it arrives from a replica process
    assert core.export_session("a") == record and not core.scheduler.has_work
    core.close_session("a")
    assert run("a", "Hello again.", expect=ABSENT).output_ids


def _turn_runner(core):
    """run(sid, text, expect=None): one 3-token turn of ``sid`` to its end; returns the Turn."""
    params = SamplingParams(max_tokens=3)

    def run(sid, text, expect=None):
        turn = core.add_turn(sid, [{"role": "user", "content": text}], params, expect=expect)
        while core.scheduler.has_work:
            core.step()
        return turn

    return run


def _record(sid):
    from swiftinfer_core.protocol import SessionRecord

    return SessionRecord(sid, [1], [2], [], 2, 1)


def test_tools_are_rendered_by_an_override_template_and_a_forced_call_uses_its_tags(make_core):
    import json
    from pathlib import Path

    from swiftinfer_core.config import Grammar
    from swiftinfer_core.conversation.tool_syntax import TaggedCalls
    from swiftinfer_core.protocol import ToolPrompt

    template = (Path(__file__).parents[1] / "conversation" / "chatml_tools.jinja").read_text()
    core = make_core(chat_template=template)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"], "additionalProperties": False}}}
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
              "properties": {"name": {"const": "get_weather"}, "arguments": tool["function"]["parameters"]}}
    syntax = core.format.tool_syntax
    params = SamplingParams(max_tokens=40, grammar=Grammar(kind="json_schema", json_schema=json.dumps(schema), before=syntax.before, after=syntax.after))
    turn = core.add_turn("t", ToolPrompt(msgs, [tool]), params)
    assert turn.to_feed == core.format.first_round(msgs, [tool]) and json.dumps(tool) in core.tokenizer.decode(turn.to_feed)
    chunks = []
    while not chunks or not chunks[-1].final:
        chunks.extend(ev.chunk for ev in core.step())
    text = "".join(c.text for c in chunks)
    (call,) = TaggedCalls().parse(text, ["get_weather"]).calls
    assert syntax == TaggedCalls() and chunks[-1].finish_reason == "stop" and json.loads(call.arguments)["city"]
    with pytest.raises(InvalidRequestError, match="^tools:"):
        make_core().add_turn("u", ToolPrompt(msgs, [tool]), SamplingParams())


def test_slotless_ids_are_the_sessions_that_lost_their_slot(make_core):
    from swiftinfer_core.protocol import EngineProtocol

    core = make_core(max_sessions=2)
    for sid in ("a", "b", "c"):  # one at a time: "a" is the least recently used when "c" needs a slot
        core.add_turn(sid, [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=2))
        while core.scheduler.has_work:
            core.step()
    assert core.slotless_ids() == ["a"]
    assert EngineProtocol.slotless_ids(core) == ["a"]  # the default for engines without their own: a view per session
