"""Incremental detokenisation never splits a UTF-8 character and holds back stop prefixes."""

from swiftinfer_core.conversation.detokenizer import IncrementalDetokenizer


def test_streamed_text_equals_full_decode(base_model):
    tok = base_model.tokenizer
    text = "Héllo wörld — 世界 🙂🚀 naïve café, ok."
    ids = tok(text, add_special_tokens=False).input_ids
    d = IncrementalDetokenizer(tok, stop=[])
    pieces = [d.add(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_is_never_emitted(base_model):
    tok = base_model.tokenizer
    ids = tok("one two three four five", add_special_tokens=False).input_ids
    d = IncrementalDetokenizer(tok, stop=["four"])
    out = ""
    for i in ids:
        out += d.add(i)
        assert "fou" not in out or d.stopped
        if d.stopped:
            break
    out += d.flush()
    assert out == "one two three " and d.stopped
