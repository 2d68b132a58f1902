"""Structured output through EngineCore on the real model (engine/grammar.py):
the bitmask unpacking against a per-token reference, replies that parse and
validate, the mask applied only to constrained rows of a mixed batch, and the
grammar state living with the turn."""

import json

import jsonschema
import pytest
import torch

from swiftinfer_core.config import Grammar, SamplingParams
from swiftinfer_core.engine.grammar import check_schema, mask_logits, unpack
from swiftinfer_core.errors import InvalidRequestError

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pets"], "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "pets": {"type": "array", "maxItems": 3, "items": {"enum": ["cat", "dog", "fish"]}},
}}


def person(**kw) -> SamplingParams:
    return SamplingParams(grammar=Grammar(kind="json_schema", json_schema=json.dumps(PERSON)), **kw)


def run(core, turns: dict[str, tuple[str, SamplingParams]]) -> dict[str, tuple[str, str]]:
    """Run turns together to the end: sid -> (text, finish reason)."""
    live = {sid: core.add_turn(sid, [{"role": "user", "content": text}], p) for sid, (text, p) in turns.items()}
    out = {sid: ["", None] for sid in turns}
    while any(r[1] is None for r in out.values()):
        for ev in core.step():
            sid = ev.turn.session.id
            out[sid][0] += ev.chunk.text
            out[sid][1] = ev.chunk.finish_reason or out[sid][1]
    assert all(t.session.turn is None for t in live.values())
    return {sid: (t, r) for sid, (t, r) in out.items()}


def test_unpack_matches_a_per_token_reference():
    g = torch.Generator().manual_seed(0)
    vocab = 100
    words = torch.randint(-(1 << 31), (1 << 31) - 1, (3, 4), dtype=torch.int64, generator=g).to(torch.int32)
    ref = torch.tensor([[(int(words[r, t // 32]) >> (t % 32)) & 1 for t in range(vocab)] for r in range(3)], dtype=torch.bool)
    assert torch.equal(unpack(words, vocab), ref)


def test_mask_logits_matches_xgrammars_own_kernel_on_constrained_rows_only(base_model):
    import xgrammar

    from swiftinfer_core.engine.grammar import Grammars, fill_bitmask

    vocab = base_model.args.vocab_size
    grammars = Grammars(base_model.tokenizer, vocab, {2})
    a, b = grammars.start(Grammar(kind="json_object")), person().grammar
    b = grammars.start(b)
    assert b.accept(base_model.tokenizer.encode('{"', add_special_tokens=False)[0])  # a second, different state
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    out = mask_logits(logits, [0, 2], [a, b])
    assert torch.equal(logits, before)  # maybe a CUDA graph's buffer: never written
    ref = logits[[0, 2]].clone()
    xgrammar.apply_token_bitmask_inplace(ref, fill_bitmask([a, b], vocab))
    assert torch.equal(out[[0, 2]], ref) and torch.equal(out[1], logits[1])
    assert 0 < int(torch.isfinite(out[0]).sum()) < vocab and not torch.equal(torch.isfinite(out[0]), torch.isfinite(out[2]))


def test_schema_replies_parse_and_validate_at_temperature_one(make_core):
    core = make_core(max_sessions=8, window=200)
    turns = {f"s{i}": ("Describe a person as JSON.", person(temperature=1.0, seed=i, max_tokens=80)) for i in range(8)}
    for sid, (text, reason) in run(core, turns).items():
        assert reason == "stop", (sid, text)
        jsonschema.validate(json.loads(text), PERSON)


def test_only_constrained_rows_are_masked_and_the_next_turn_starts_clean(make_core):
    core = make_core(max_sessions=4, window=200)
    free = SamplingParams(max_tokens=12)
    alone = run(core, {"ref": ("Say hello.", free)})["ref"]
    both = run(core, {"free": ("Say hello.", free), "json": ("Say hello.", SamplingParams(
        grammar=Grammar(kind="json_object"), max_tokens=40))})
    assert both["free"] == alone  # the unconstrained row of a mixed step is untouched (greedy: same text)
    assert isinstance(json.loads(both["json"][0]), dict) and both["json"][1] == "stop"
    assert not both["json"][0].startswith("{") or not alone[0].startswith("{")  # free text is not JSON-bound
    # the session's next turn is free again: the grammar died with the turn
    after = run(core, {"json": ("Now say hello in plain words.", free)})["json"]
    assert core.sessions["json"].turn is None and after[1] in ("stop", "length")
    with pytest.raises(json.JSONDecodeError):
        json.loads(after[0])


def test_bad_schemas_and_combinations_are_refused(make_core):
    with pytest.raises(InvalidRequestError, match="unsupported JSON schema"):
        check_schema('{"type": "frobnicate"}')
    with pytest.raises(InvalidRequestError, match="unsupported JSON schema"):
        check_schema("{not json")
    core = make_core()
    bad = SamplingParams(grammar=Grammar(kind="json_schema", json_schema='{"type": "frobnicate"}'))
    with pytest.raises(InvalidRequestError, match="unsupported JSON schema"):
        core.add_turn("x", [{"role": "user", "content": "hi"}], bad)
    assert "x" not in core.sessions  # refused before any state changed
    with pytest.raises(InvalidRequestError, match="min_tokens"):
        SamplingParams(grammar=Grammar(kind="json_object"), min_tokens=2)
    with pytest.raises(InvalidRequestError, match="json_schema is required"):
        Grammar(kind="json_schema")
