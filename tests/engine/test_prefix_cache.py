"""Shared prompt prefixes (engine/prefix_cache.py) on the real default model: which
rows are copied, into and from which slots, what usage says, that templates never
cost a conversation its cache, and that a reply from copied rows is the reply
from computed ones."""

from __future__ import annotations

import pytest
import torch

from swiftinfer_core import SamplingParams
from swiftinfer_core.engine.prefix_cache import common_prefix
from swiftinfer_core.protocol import RawPrompt

SYSTEM = {"role": "system", "content": "You are a patient assistant for a small bookshop in Lyon. You answer in short, "
                                       "friendly sentences, you never invent prices, and you suggest one book at a time."}
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True, logprobs=True, top_logprobs=3)


def ask(text: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": text}]


def run(core, sid: str, messages, params: SamplingParams = GREEDY):
    """(final chunk, all chunks, turn) of one whole turn, stepping the core."""
    turn = core.add_turn(sid, messages, params)
    chunks = []
    while not chunks or not chunks[-1].final:
        chunks.extend(ev.chunk for ev in core.step())
    return chunks[-1], chunks, turn


def shared(core) -> tuple[list[int], list[int], int]:
    a, b = core.format.first_round(ask("Which novel suits a rainy day?")), core.format.first_round(ask("Do you sell maps?"))
    return a, b, common_prefix(a, b)


@pytest.fixture
def prefix_core(make_core):
    return lambda **over: make_core(**{"window": 200, "prefix_cache_slots": 2, "prefix_cache_min_tokens": 16, **over})


def test_a_new_conversation_copies_the_shared_system_prompt_and_replies_as_if_computed(prefix_core, make_core):
    core = prefix_core()
    a, b, m = shared(core)
    assert 40 < m < min(len(a), len(b))
    last_a, _, _ = run(core, "a", ask("Which novel suits a rainy day?"))
    assert last_a.usage.cached_tokens == 0 and last_a.usage.prefilled_tokens == len(a)
    [tpl] = core.prefix.templates
    assert (tpl.slot, tpl.ids) == (1, a)  # "a" holds slot 0; its whole first input is the template
    assert core.stats().free_slots == 3 and core.pool.slots.free == 2  # the template's slot counts as free

    last_b, chunks_b, turn_b = run(core, "b", ask("Do you sell maps?"))
    assert turn_b.session.slot == 2 and turn_b.reused == m
    assert last_b.usage.cached_tokens == m and last_b.usage.prefilled_tokens == len(b) - m
    st = core.stats()
    assert (st.prefix_hits, st.prefix_tokens) == (1, m)

    ref = make_core(window=200)  # no prefix cache: every row computed
    last_r, chunks_r, turn_r = run(ref, "b", ask("Do you sell maps?"))
    assert last_r.usage.cached_tokens == 0 and last_r.usage.prefilled_tokens == len(b)
    assert turn_b.output_ids == turn_r.output_ids
    got = torch.tensor([[p.logprob for p in c.logprobs] for c in chunks_b if c.logprobs for p in [c.logprobs[0]]])
    want = torch.tensor([[p.logprob for p in c.logprobs] for c in chunks_r if c.logprobs for p in [c.logprobs[0]]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    for layer in (0, len(core.pool.k) - 1):  # the copied rows are the computed ones (up to summation order)
        torch.testing.assert_close(core.pool.k[layer][2, :, :m], ref.pool.k[layer][turn_r.session.slot, :, :m], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(core.pool.v[layer][2, :, :m], ref.pool.v[layer][turn_r.session.slot, :, :m], rtol=1e-5, atol=1e-5)


def test_a_full_pool_gives_up_templates_and_idle_caches_least_recently_used_first(prefix_core, make_core):
    core = prefix_core(max_sessions=3)
    a, b, m = shared(core)
    run(core, "a", ask("Which novel suits a rainy day?"))
    _, _, turn_b = run(core, "b", ask("Do you sell maps?"))  # a hit: the template was used after "a" last was
    assert [t.slot for t in core.prefix.templates] == [1] and turn_b.session.slot == 2 and turn_b.reused == m
    assert core.pool.slots.free == 0 and core.stats().free_slots == 1
    _, _, turn_c = run(core, "c", ask("Do you sell postcards?"))
    assert core.sessions["a"].slot is None and turn_c.session.slot == 0  # "a" was the coldest
    assert [t.slot for t in core.prefix.templates] == [1] and turn_c.reused == m  # copied from the template

    for sid in ("b", "c"):  # warm turns: both now used after the template
        run(core, sid, [{"role": "user", "content": "Thanks."}])
    _, _, turn_d = run(core, "d", ask("Do you sell bookmarks?"))  # the template is the coldest: taken, rows kept
    assert turn_d.session.slot == 1 and core.prefix.templates == [] and turn_d.reused == m
    assert {sid: s.slot for sid, s in core.sessions.items()} == {"a": None, "b": 2, "c": 0, "d": 1}
    assert core.stats().prefix_hits == 3
    ref = make_core(window=200)
    _, _, want = run(ref, "d", ask("Do you sell bookmarks?"))
    assert turn_d.output_ids == want.output_ids


def test_a_rebuilt_conversation_starts_from_its_own_first_input(prefix_core):
    core = prefix_core(max_sessions=3)
    a, _, _ = shared(core)
    run(core, "a", ask("Which novel suits a rainy day?"))
    session = core.sessions["a"]
    cached = session.cached_ids()
    core.pool.slots.release(session.slot)
    session.drop_cache()  # as when the slot went to another conversation
    last, _, turn = run(core, "a", [{"role": "user", "content": "And for a sunny one?"}])
    assert turn.to_feed[: len(a)] == a and turn.reused == len(a)
    assert last.usage.prefilled_tokens == len(turn.to_feed) - len(a)
    assert session.cached_ids()[: len(cached)] == cached


def test_what_is_not_stored_or_not_copied(prefix_core):
    core = prefix_core(window=60, prefix_cache_min_tokens=40)
    long_q = "Tell me, in detail, about every shelf of the shop and every book on it, one by one, please."
    long_ids = core.format.first_round(ask(long_q))
    assert len(long_ids) > core.layout.capacity
    run(core, "long", ask(long_q))
    assert core.prefix.templates == []  # past the cache's capacity: rows 0.. no longer hold the input's start
    short = [{"role": "user", "content": "Hi."}]
    run(core, "short", short)
    assert core.prefix.templates == []  # under min_tokens (32: the template's default system prompt and "Hi.")
    run(core, "a", [SYSTEM])
    assert len(core.prefix.templates) == 1
    _, _, scored = run(core, "scored", ask("Hi."), GREEDY.model_copy(update={"prompt_logprobs": 1}))
    assert scored.reused == 0  # its input's scores need every position computed


def test_a_longer_input_over_a_template_replaces_it_and_short_matches_are_ignored(prefix_core):
    core = prefix_core(prefix_cache_min_tokens=20, max_sessions=6)
    base = list(range(1000, 1040))
    run(core, "p", RawPrompt(base))
    [tpl] = core.prefix.templates
    assert tpl.ids == base
    _, _, t = run(core, "q", RawPrompt(base + list(range(2000, 2030))))
    assert t.reused == 40
    [ext] = core.prefix.templates  # extended in place: one template, the same slot
    assert ext.slot == tpl.slot and ext.ids == base + list(range(2000, 2030))
    _, _, t = run(core, "r", RawPrompt(base[:19] + [7, 8, 9]))
    assert t.reused == 0  # 19 shared tokens < min_tokens
    _, _, t = run(core, "s", RawPrompt(base))
    assert t.reused == 39  # its last token always runs: its logits start the reply
    assert len(core.prefix.templates) == 1


def test_warm_up_leaves_no_template(prefix_core):
    core = prefix_core(prefix_cache_min_tokens=8)
    core.warm_up()
    assert core.prefix.templates == [] and core.stats().free_slots == 4 and core.stats().prefix_hits == 0


def test_fp8_cache_rows_and_scales_are_copied_together(prefix_core, make_core):
    """kv_cache_dtype fp8 (cache/kv_fp8.py): a row's e4m3 codes travel with their scales."""
    core, ref = prefix_core(kv_cache_dtype="fp8"), make_core(window=200, kv_cache_dtype="fp8")
    _, _, m = shared(core)
    run(core, "a", ask("Which novel suits a rainy day?"))
    _, _, turn = run(core, "b", ask("Do you sell maps?"))
    _, _, want = run(ref, "b", ask("Do you sell maps?"))
    assert turn.reused == m and turn.output_ids == want.output_ids
    [tpl] = core.prefix.templates
    for cache in (core.pool.k[3], core.pool.v[3]):  # bit for bit the template's codes and scales
        got, src = cache[turn.session.slot, :, :m], cache[tpl.slot, :, :m]
        assert torch.equal(got.data.view(torch.uint8), src.data.view(torch.uint8)) and torch.equal(got.scale, src.scale)


def test_common_prefix_at_every_length():
    import random

    rng = random.Random()
    for _ in range(200):
        a = [rng.randrange(5) for _ in range(rng.randrange(0, 300))]
        cut = rng.randrange(0, len(a) + 1)
        b = a[:cut] + [rng.randrange(5, 9) for _ in range(rng.randrange(0, 50))]
        want = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == want == cut


LONG_SYSTEM = {"role": "system", "content": " ".join(
    ["You are the help desk of a small bookshop in Lyon."] + [f"Rule {i}: answer briefly, never invent a price, suggest one book." for i in range(12)])}


def long_ask(text: str) -> list[dict]:
    return [LONG_SYSTEM, {"role": "user", "content": text}]


def test_a_system_prompt_longer_than_the_cache_is_kept_whole_once_seen_twice(prefix_core, make_core):
    """Inputs longer than the cache: the second one sharing a prefix with the first
    cuts its prefill there and leaves the whole slot as a template; the third takes
    every row of it and replies as if it had computed them."""
    core = prefix_core(window=60, prefill_chunk=48)  # capacity 64
    questions = ["Which novel suits a rainy day?", "Do you sell maps?", "Do you sell postcards?"]
    inputs = [core.format.first_round(long_ask(q)) for q in questions]
    b = common_prefix(inputs[0], inputs[1])
    assert b == common_prefix(inputs[0], inputs[2]) and 64 < b < min(map(len, inputs))

    _, _, turn_a = run(core, "a", long_ask(questions[0]))
    assert turn_a.cut is None and core.prefix.templates == []  # nothing to share yet
    _, _, turn_b = run(core, "b", long_ask(questions[1]))
    assert turn_b.cut == b and turn_b.reused == 0
    [tpl] = core.prefix.templates
    assert tpl.wrapped and tpl.ids == inputs[1][:b] and tpl.slot == 2
    assert tpl.usable(inputs[2]) == b and tpl.usable(inputs[2][: b - 1] + [0] * 9) == 0  # all of it or nothing

    last_c, chunks_c, turn_c = run(core, "c", long_ask(questions[2]))
    assert turn_c.reused == b and turn_c.cut is None  # held by the template already
    assert last_c.usage.cached_tokens == b and last_c.usage.prefilled_tokens == len(inputs[2]) - b
    assert (core.stats().prefix_hits, core.stats().prefix_tokens) == (1, b)

    ref = make_core(window=60, prefill_chunk=48)  # no prefix cache: every row computed
    for sid, question, turn in (("b", questions[1], turn_b), ("c", questions[2], turn_c)):
        _, chunks_r, turn_r = run(ref, sid, long_ask(question))
        assert turn.output_ids == turn_r.output_ids, sid
    got = torch.tensor([[p.logprob for p in c.logprobs[0:1]] for c in chunks_c if c.logprobs])
    want = torch.tensor([[p.logprob for p in c.logprobs[0:1]] for c in chunks_r if c.logprobs])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
