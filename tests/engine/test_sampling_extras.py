"""Penalties, logit bias, min_tokens and logprobs through EngineCore on the real
model, against the model's own logits computed here with Hugging Face
transformers (a full forward: every test turn fits in the cache, so the
StreamingLLM cache and a plain forward see the same tokens)."""

from collections import Counter

import pytest
import torch

from swiftinfer_core.config import SamplingParams
from swiftinfer_core.engine.penalties import RowAdjust, adjust


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


def run_turn(core, sid, text, params):
    turn = core.add_turn(sid, [{"role": "user", "content": text}], params)
    chunks = []
    while not (chunks and chunks[-1].finish_reason):
        chunks.extend(ev.chunk for ev in core.step() if ev.turn is turn)
    return turn, chunks


def stream_of(core, sid) -> list[int]:
    s = core.sessions[sid]
    return s.sink_ids + list(s.window_ids)


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=10, logprobs=True, top_logprobs=4),
    SamplingParams(max_tokens=10, logprobs=True, top_logprobs=2, temperature=0.9, seed=3,
                   presence_penalty=0.7, frequency_penalty=0.4, repetition_penalty=1.3, logit_bias={28: 1.5}),
])
def test_logprobs_equal_the_models_logits_after_the_penalties(make_core, hf_model, params):
    core = make_core(window=200)
    run_turn(core, "r", "Say something short.", SamplingParams(max_tokens=6))  # a first round: penalties see it too
    turn, chunks = run_turn(core, "r", "Now repeat the same words again and again.", params)
    out = turn.output_ids
    lps = [lp for c in chunks for lp in c.logprobs]
    ids = [t for c in chunks for t in c.token_ids]
    assert [lp.token for lp in lps] == ids == out[: len(ids)]
    # the stream up to the first output: everything the cache held when it was sampled
    full = stream_of(core, "r")
    start = len(full) - (len(out) - 1)  # all outputs but the last were fed
    assert full[start:] == out[:-1]
    with torch.no_grad():
        logits = hf_model(torch.tensor([full + out[-1:]])).logits[0].float()  # [T, V]
    for j, lp in enumerate(lps):
        row = logits[start - 1 + j][None, :]
        counts = Counter(full[: start + j])
        adj = adjust(row, [params], [RowAdjust(counts=counts)])[0].double()
        ref = torch.log_softmax(adj, -1)
        assert abs(lp.logprob - float(ref[lp.token])) < 2e-3, (j, lp.logprob, float(ref[lp.token]))
        top = torch.topk(ref, params.top_logprobs)
        assert [t for t, _ in lp.top] == top.indices.tolist(), j
        if params.temperature == 0.0:
            assert lp.token == int(ref.argmax())


def test_logit_bias_and_min_tokens_steer_greedy_output(make_core):
    core = make_core()
    tok = core.tokenizer.encode(" banana")[0]
    turn, _ = run_turn(core, "b", "Hello!", SamplingParams(max_tokens=5, logit_bias={tok: 100.0}))
    assert turn.output_ids == [tok] * 5
    # a greedy reply that ends early ("stop") runs to max_tokens under min_tokens
    short, last = run_turn(core, "m1", "Reply with one word: yes or no?", SamplingParams(max_tokens=40))
    assert last[-1].finish_reason == "stop"
    n = len(short.output_ids)
    long, last = run_turn(core, "m2", "Reply with one word: yes or no?", SamplingParams(max_tokens=n + 6, min_tokens=n + 6))
    assert last[-1].finish_reason == "length" and len(long.output_ids) == n + 6
    assert not set(long.output_ids) & core.eos_ids


def test_an_out_of_vocabulary_bias_is_refused(make_core):
    from swiftinfer_core.errors import InvalidRequestError

    core = make_core()
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        core.add_turn("x", [{"role": "user", "content": "hi"}], SamplingParams(logit_bias={10**7: 1.0}))
    assert "x" not in core.sessions
