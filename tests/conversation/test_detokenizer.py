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


def test_the_fast_decoder_gives_the_tokenizers_own_text(base_model):
    """The default tokenizer has no space clean-up, so the detokenizer calls the tokenizers
    library directly: the same text as transformers' decode on random ids, special ones included."""
    import random

    from swiftinfer_core.conversation.detokenizer import text_decoder

    tok = base_model.tokenizer
    fast = text_decoder(tok)
    assert fast.func == tok.backend_tokenizer.decode  # the direct path, not the wrapper's
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    specials = sorted(tok.all_special_ids)
    for _ in range(300):
        ids = [rng.choice(specials) if rng.random() < 0.1 else rng.randrange(len(tok)) for _ in range(rng.randrange(1, 9))]
        assert fast(ids) == tok.decode(ids, skip_special_tokens=True), (seed, ids)


def test_a_tokenizer_that_cleans_up_spaces_keeps_the_wrapper(base_model):
    from swiftinfer_core.conversation.detokenizer import text_decoder

    class CleaningUp:  # a wrapper whose decode adds a step the tokenizers library does not do
        backend_tokenizer = base_model.tokenizer.backend_tokenizer
        clean_up_tokenization_spaces = True

        def decode(self, ids, skip_special_tokens=False):
            return "cleaned"

    assert text_decoder(CleaningUp())([1, 2]) == "cleaned"
