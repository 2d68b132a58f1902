"""Moving a conversation between engines: exact KV transfer (export_kv/import_kv)
and the record's sampling state (a session samples the same on any engine)."""

import torch

from swiftinfer_core import SamplingParams
from swiftinfer_core.protocol import SessionRecord

from test_core import run_turn

SAMPLED = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.95)
TURNS = ("Tell me about the sea.", "And about the mountains?", "Which do you prefer, and why?")


def _talk(core, sid: str, params=SAMPLED) -> None:
    for text in TURNS:
        run_turn(core, sid, text, params)


def test_kv_snapshot_continues_exactly_on_another_engine(make_core):
    a, b = make_core(window=60), make_core(window=60)
    _talk(a, "m")
    assert a.session_stats("m").evictions > 0  # the ring wrapped: rows are not in stream order
    snap = a.export_kv("m")
    assert snap is not None and snap.n == a.sessions["m"].n and snap.k.shape[2] == 64
    assert snap.nbytes == 2 * snap.k.numel() * 4

    assert b.import_kv(snap)
    st = b.session_stats("m")
    assert st.resident and not st.recovered and st.rounds == 3
    # Same next turn on both: identical sampled text and identical prefill (no rebuild on b).
    text_a, last_a = run_turn(a, "m", "Thanks. One more word?", SAMPLED)
    text_b, last_b = run_turn(b, "m", "Thanks. One more word?", SAMPLED)
    assert text_a == text_b
    assert last_a.usage.prefilled_tokens == last_b.usage.prefilled_tokens < 30
    assert last_b.usage.cached_tokens == 64
    assert a.export_session("m") == b.export_session("m")


def test_snapshot_of_a_short_conversation_copies_only_rows_in_use(make_core):
    a, b = make_core(window=60), make_core(window=60)
    run_turn(a, "s", "Hi!", SamplingParams(max_tokens=3))
    snap = a.export_kv("s")
    assert snap.k.shape[2] == a.sessions["s"].n < 64
    assert b.import_kv(snap)
    assert torch.equal(b.pool.k[3][b.sessions["s"].slot, :, : snap.n], a.pool.k[3][a.sessions["s"].slot, :, : snap.n])


def test_mismatched_or_non_resident_snapshots_are_refused(make_core):
    a, other = make_core(window=60), make_core(window=124)
    run_turn(a, "x", "Hello there.")
    snap = a.export_kv("x")
    assert not other.import_kv(snap) and "x" not in other.sessions  # different layout: rebuild instead
    a.sessions["x"].drop_cache()
    a.pool.slots.release(0)
    assert a.export_kv("x") is None  # no slot, nothing to move


def test_record_round_trip_keeps_the_sampling_state(make_core):
    a, b = make_core(window=60), make_core(window=60)
    run_turn(a, "r", "Say something random.", SAMPLED)
    rec = a.export_session("r")
    assert rec.sampling_seed != 0 and SessionRecord.from_dict(rec.to_dict()) == rec
    b.import_session(rec)
    assert b.export_session("r").sampling_seed == rec.sampling_seed
    # Per-turn seeds depend on (session seed, round), not on the engine's history:
    # the same first turn of another session id on a busy engine draws differently,
    # while the same session id on a fresh engine draws the same.
    c = make_core(window=60)
    run_turn(c, "noise", "Unrelated turn first.", SAMPLED)
    first_a = run_turn(make_core(window=60), "same", "Pick a word.", SAMPLED)[0]
    first_c = run_turn(c, "same", "Pick a word.", SAMPLED)[0]
    assert first_a == first_c


def test_engines_smoothed_differently_do_not_share_caches(make_core):
    """quant_smoothing divides the cached values by its scales (model/smooth.py): the fingerprint
    that gates import_kv names it, so those engines rebuild from the record instead."""
    from swiftinfer_core.config import EngineConfig
    from swiftinfer_core.engine.kv_transfer import kv_fingerprint

    a = make_core(window=60)
    fp8 = dict(quantization="fp8", device="cuda", quant_rounding="gptq")
    prints = {kv_fingerprint(EngineConfig(**fp8, quant_smoothing=s), a.loaded) for s in (None, 0.5, 0.6)}
    assert len(prints) == 3
    assert kv_fingerprint(EngineConfig(**fp8), a.loaded) == kv_fingerprint(EngineConfig(**fp8), a.loaded)
