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


@pytest.fixture(scope="module")
def hf_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def test_prompt_logprobs_over_chunks_and_rounds_equal_the_models(make_core, hf_model):
    """Scored in chunks of 8 (so across chunk boundaries), on a fresh session and
    on its next round (whose first input token follows the previous reply)."""
    import torch

    core = make_core(window=200, prefill_chunk=8)
    a = core.tokenizer.encode("The quick brown fox jumps over the lazy dog, and then it runs away.")
    b = core.tokenizer.encode(" Later that day")
    params = SamplingParams(max_tokens=3, ignore_eos=True, prompt_logprobs=2)

    def scored(sid, ids):
        turn = core.add_turn(sid, RawPrompt(ids), params)
        chunks = []
        while turn.session.turn is turn:
            chunks.extend(ev.chunk for ev in core.step() if ev.turn is turn)
        firsts = [c.prompt_logprobs for c in chunks if c.prompt_logprobs is not None]
        assert len(firsts) == 1 and chunks[0].prompt_logprobs is not None
        return turn, firsts[0]

    t1, s1 = scored("p", a)
    t2, s2 = scored("p", b)
    stream = a + t1.output_ids + b
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([stream])).logits[0].double(), -1)
    assert len(s1) == len(a) and s1[0] is None and len(s2) == len(b)
    for pos, lp in list(enumerate(s1))[1:] + [(len(a) + len(t1.output_ids) + j, lp) for j, lp in enumerate(s2)]:
        assert lp.token == stream[pos]
        assert abs(lp.logprob - float(ref[pos - 1, stream[pos]])) < 2e-3, pos
        assert [t for t, _ in lp.top] == torch.topk(ref[pos - 1], 2).indices.tolist(), pos


def test_a_prompt_longer_than_the_cache_is_scored_as_eval_ppl_streams(make_core, base_model, shakespeare_text):
    """Window 60 + 4 sinks, a 300-token prompt in chunks of 64: the engine's prompt
    logprobs equal eval-ppl's StreamingLLM NLLs (swiftinfer_core/eval/ppl.py)."""
    from swiftinfer_core.cache.layout import StreamLayout
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.eval.ppl import stream_nll

    core = make_core(window=60, prefill_chunk=64, max_turn_tokens=400)
    ids = core.tokenizer.encode(shakespeare_text[:4000])[:300]
    turn = core.add_turn("long", RawPrompt(ids), SamplingParams(max_tokens=1, prompt_logprobs=0))
    first = None
    while turn.session.turn is turn:
        for ev in core.step():
            if ev.turn is turn and first is None:
                first = ev.chunk.prompt_logprobs
    ref = stream_nll(base_model, EngineConfig(device="cpu", window=60), ids, StreamLayout(4, 60), chunk=64)
    assert first[0] is None and len(first) == len(ids) == len(ref.nll) + 1
    worst = max(abs(lp.logprob + nll) for lp, nll in zip(first[1:], ref.nll))
    assert worst < 2e-3, worst
