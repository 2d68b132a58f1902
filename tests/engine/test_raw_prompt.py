"""Token-id prompts (protocol.RawPrompt, /v1/completions): fed verbatim, and a
session's next raw turn continues the token stream exactly as it was sampled."""

import pytest

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.errors import InvalidRequestError
from swiftinfer_core.protocol import RawPrompt


def run(core, sid, prompt, params=SamplingParams(max_tokens=6, ignore_eos=True)):
    turn = core.add_turn(sid, prompt, params)
    while turn.session.turn is turn:
        core.step()
    return turn


def test_raw_prompts_are_fed_verbatim_and_continue_the_stream(make_core):
    core = make_core(window=200)
    ids = core.tokenizer.encode("The capital of France is")
    first = run(core, "raw", RawPrompt(ids))
    second = run(core, "raw", RawPrompt(core.tokenizer.encode(" and")))
    s = core.sessions["raw"]
    stream = s.sink_ids + list(s.window_ids)
    # fed: prompt, first reply (its last token at the next turn's start), second prompt, second reply but its last
    assert stream == ids + first.output_ids + core.tokenizer.encode(" and") + second.output_ids[:-1]
    assert s.pending == second.output_ids[-1:]
    # one raw turn over the whole stream samples the same greedy continuation
    alone = run(core, "raw-2", RawPrompt(ids + first.output_ids + core.tokenizer.encode(" and")))
    assert alone.output_ids == second.output_ids


def test_bad_raw_prompts_are_refused(make_core):
    core = make_core()
    for bad in ([], [-1], [1.5], [10**8]):
        with pytest.raises(InvalidRequestError):
            core.add_turn("bad", RawPrompt(bad), SamplingParams())
    assert "bad" not in core.sessions
