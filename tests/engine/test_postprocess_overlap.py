"""Postprocessing one step behind (EngineCore.overlap, on by default on a GPU): the same
chunks, each turn's in order, the first text and every turn's end in their own step.

The overlap only pays where the device runs asynchronously; its bookkeeping is the
same on any device, so these tests turn it on for the CPU engine."""

from swiftinfer_core import SamplingParams
from swiftinfer_core.engine.core import EngineCore

PROMPTS = ["Tell me about rivers.", "Name three colours.", "What is a castle?", "Count to ten."]
PARAMS = [
    SamplingParams(max_tokens=14),  # greedy
    SamplingParams(max_tokens=9, stop=[" and", "."]),  # stop strings: never deferred
    SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=3, logprobs=True, top_logprobs=2),
    SamplingParams(max_tokens=11, n=2, seed=5, temperature=0.7),  # a choice fork beside the main turn
]


def run_round(core: EngineCore, tag: str) -> tuple[dict, list[tuple[int, str, int]]]:
    """One turn per prompt, all at once: per (session, choice) its chunks; and the
    (step, session, choice) of every chunk."""
    turns = [core.add_turn(f"{tag}{i}", [{"role": "user", "content": p}], PARAMS[i]) for i, p in enumerate(PROMPTS)]
    chunks: dict[tuple[str, int], list] = {}
    when = []
    step = 0
    while core.has_work:
        for ev in core.step():
            key = (ev.turn.session.id[len(tag):], ev.chunk.index)
            chunks.setdefault(key, []).append(ev.chunk)
            when.append((step, key))
        step += 1
    assert all(t.session.turn is None for t in turns)
    return chunks, when


def same_stream(a: list, b: list) -> None:
    assert "".join(c.text for c in a) == "".join(c.text for c in b)
    assert [i for c in a for i in c.token_ids] == [i for c in b for i in c.token_ids]
    assert [lp for c in a for lp in (c.logprobs or [])] == [lp for c in b for lp in (c.logprobs or [])]
    assert (a[-1].finish_reason, a[-1].usage) == (b[-1].finish_reason, b[-1].usage)
    assert all(c.finish_reason is None for c in a[:-1])


def test_overlapped_postprocessing_gives_the_same_chunks_a_step_later(make_core):
    plain, ahead = make_core(window=60), make_core(window=60)
    assert not plain.overlap and not ahead.overlap  # the CPU engine runs in step
    ahead.overlap = True
    for r in range(2):  # the second round on the first's sessions
        want, want_when = run_round(plain, "s")
        got, got_when = run_round(ahead, "s")
        assert sorted(got) == sorted(want) and len(want) == len(PROMPTS) + 1
        for key in want:
            same_stream(got[key], want[key])
        first = {key: min(s for s, k in want_when if k == key) for key in want}
        last = {key: max(s for s, k in want_when if k == key) for key in want}
        for key in want:
            # the first chunk and the final one leave in the same step as without the overlap
            assert min(s for s, k in got_when if k == key) == first[key], (r, key)
            assert max(s for s, k in got_when if k == key) == last[key], (r, key)
        greedy_steps = [s for s, k in got_when if k == ("0", 0)]
        plain_steps = [s for s, k in want_when if k == ("0", 0)]
        end = plain_steps[-1]  # the final step's own chunks are not deferred; the ones between leave a step later
        assert greedy_steps == plain_steps[:1] + [s + 1 if s < end else s for s in plain_steps[1:]], (greedy_steps, plain_steps)
        assert len(plain_steps) > 5
        stop_steps = [s for s, k in got_when if k == ("1", 0)]
        assert stop_steps == [s for s, k in want_when if k == ("1", 0)]  # stop strings: never deferred
    assert plain.export_session("s0") == ahead.export_session("s0")


def test_an_abort_between_a_deferred_token_and_its_emit_keeps_the_text_whole(make_core):
    core = make_core(window=60)
    core.overlap = True
    turn = core.add_turn("a", [{"role": "user", "content": "Tell me a long story about a river."}], SamplingParams(max_tokens=40))
    chunks = []
    while not core.post.deferred:
        chunks += [ev.chunk for ev in core.step()]
    assert [t for t, _ in core.post.deferred] == [turn]
    core.abort(turn)
    assert not core.post.deferred and not core.has_work
    ids = [i for c in chunks for i in c.token_ids]
    assert ids == turn.output_ids[: len(ids)]
    # the final chunk the abort made carries every remaining id and its text
    assert core.tokenizer.decode(turn.output_ids, skip_special_tokens=True).startswith("".join(c.text for c in chunks))
    assert turn.detok.text == core.tokenizer.decode(turn.output_ids, skip_special_tokens=True)
