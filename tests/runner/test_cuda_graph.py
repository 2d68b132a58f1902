"""Decode-graph ladder, padding and buffer ownership without a GPU (issue 11).

``EagerCapture`` runs the graphs' exact path (static buffers, padded inputs,
plan and split-K workspace made at warm-up) with the Triton kernels under the
CPU interpreter, so the padding rows' slot/position values, the ladder and the
buffer sizes are checked here; tests/runner/test_graph_ladder_gpu.py replays real
CUDA graphs.
"""

import gc
import importlib
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit decorates: before the kernels import
    for name in ("swiftinfer_core.kernels.rope_tl", "swiftinfer_core.kernels.decode_attention",
                 "swiftinfer_core.kernels.prefill_attention", "swiftinfer_core.kernels.write_cache"):
        if name in sys.modules:
            importlib.reload(sys.modules[name])

from swiftinfer_core import SamplingParams  # noqa: E402
from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.core import EngineCore  # noqa: E402
from swiftinfer_core.engine.session import TurnState  # noqa: E402
from swiftinfer_core.runner.cuda_graph import (  # noqa: E402
    LADDER, PAD_SLOT, DecodeInputs, EagerCapture, StaticDecode, ladder, padded_size,
)
from swiftinfer_core.kernels.attention import TritonAttention  # noqa: E402


def test_ladder_ends_at_max_batch_and_boundaries_pad_up():
    assert ladder(1) == [1]
    assert ladder(48) == [1, 2, 4, 8, 16, 24, 32, 48]
    assert ladder(49) == [1, 2, 4, 8, 16, 24, 32, 48, 49]
    assert ladder(128) == [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128]
    assert ladder(217)[-3:] == [128, 192, 217]
    assert ladder(10_000)[:-1] == list(LADDER)
    sizes = ladder(130)
    cases = {1: 1, 2: 2, 3: 4, 24: 24, 25: 32, 48: 48, 49: 64, 64: 64, 65: 96, 97: 128, 128: 128, 129: 130, 130: 130}
    assert {n: padded_size(sizes, n) for n in cases} == cases
    with pytest.raises(ValueError):
        padded_size(sizes, 131)
    with pytest.raises(ValueError):
        ladder(0)


def test_padding_rows_get_slot_minus_one_and_position_zero():
    p = DecodeInputs.pad([5, 6, 7], [3, 0, 9], [100, 4, 1023], 8)
    assert p.n == 3
    assert p.ids == [5, 6, 7, 0, 0, 0, 0, 0]
    assert p.slots == [3, 0, 9, -1, -1, -1, -1, -1]
    assert p.starts == [100, 4, 1023, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        DecodeInputs.pad([1, 2, 3], [0, 1, 2], [0, 0, 0], 2)
    with pytest.raises(ValueError):
        DecodeInputs.pad([1, 2], [0], [0, 0], 4)


def test_a_smaller_step_after_a_larger_one_leaves_no_stale_rows():
    from swiftinfer_core.cache.layout import StreamLayout
    from swiftinfer_core.kernels.rope import inv_freq

    attn = TritonAttention(StreamLayout(4, 60), inv_freq(64, 10000.0), 0.125)
    st = StaticDecode(8, attn, torch.device("cpu"))
    st.copy_in(DecodeInputs.pad(list(range(1, 9)), list(range(8)), list(range(10, 18)), 8))
    st.copy_in(DecodeInputs.pad([42, 43], [5, 6], [70, 71], 8))
    assert st.ids.tolist() == [42, 43] + [0] * 6
    assert st.slots.tolist() == [5, 6] + [PAD_SLOT] * 6
    assert st.starts.tolist() == [70, 71] + [0] * 6
    with pytest.raises(ValueError):
        st.copy_in(DecodeInputs.pad([1], [0], [0], 4))


@pytest.fixture(scope="module")
def tiny_dir(shape_dir):
    """The default model's tokenizer with a 2-layer, head_dim-64 GQA shape (random weights)."""
    return shape_dir(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64)


def _core(tiny_dir, slots: int, graphs: bool, fused: bool = False) -> EngineCore:
    cfg = EngineConfig(model=str(tiny_dir), load_format="random", device="cpu", attention="triton", dtype="float32",
                       sink_tokens=4, window=28, max_sessions=slots, cuda_graphs=False, max_batch_tokens=96, prefill_chunk=32)
    core = EngineCore(cfg)
    core.runner.model.fuse_elementwise(fused)  # as runner/build.py sets it on a GPU; before any capture
    if graphs:
        core.runner.capture_decode_graphs(slots, EagerCapture())
    return core


def test_each_graph_owns_the_workspace_its_warm_up_made(tiny_dir, monkeypatch):
    """The bug behind issue 11: the split-K workspace allocated during warm-up was
    referenced only by a capture-loop local, so it was freed while the graphs
    kept writing into it. Every workspace made during capture must be owned by
    the StaticDecode of its size, sized for that batch."""
    from swiftinfer_core.kernels import decode_splits

    made = []
    real = decode_splits.decode_workspace

    def recording(B, *a, **k):
        ws = real(B, *a, **k)
        made.append((B, ws))
        return ws

    monkeypatch.setattr(decode_splits, "decode_workspace", recording)
    core = _core(tiny_dir, 10, graphs=True)
    graphs = core.runner.graphs
    assert graphs.sizes == [1, 2, 4, 8, 10]
    gc.collect()
    owned = {id(t) for st in graphs.static.values() for t in st.plan.workspace}
    assert sorted({B for B, _ in made}) == graphs.sizes
    assert all(id(t) in owned for _, ws in made for t in ws)
    for size, st in graphs.static.items():
        assert type(st.plan).__name__ == "DecodePlan" and st.plan.workspace[0].shape[0] == size


def _turns(core: EngineCore, sids: list[str], max_tokens: int) -> dict[str, list[int]]:
    """One round of every conversation in ``sids`` at once; prompts of different
    lengths, so long prefills run in the same steps as others' decodes."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    turns = {sid: core.add_turn(sid, [{"role": "user", "content": "river stone " * (2 + i % 3)}], params)
             for i, sid in enumerate(sids)}
    while any(t.session.turn is t for t in turns.values()):
        core.step()
    return {sid: list(t.output_ids) for sid, t in turns.items()}


def test_graph_path_equals_eager_at_every_ladder_size_and_boundary(tiny_dir):
    """Greedy tokens through padded graph replays equal the eager path's, for
    batch sizes on and between ladder rungs, with mixed steps (decode rows
    beside prefill chunks), warm turns, a rebuild from the record, and more
    conversations than slots (slots lent, caches rebuilt)."""
    a, b = _core(tiny_dir, 10, graphs=True), _core(tiny_dir, 10, graphs=False)
    graph_rows = []
    real_run = a.runner.graphs.run
    a.runner.graphs.run = lambda ids, slots, starts: graph_rows.append(len(ids)) or real_run(ids, slots, starts)
    mixed_steps = [0]
    real_eager = a.batches._eager

    def eager(seqs, idx):
        decode = [len(seqs[i].token_ids) == 1 and seqs[i].turn.state is TurnState.DECODE for i in idx]
        if any(decode) and not all(decode):
            assert sorted(idx) == list(range(len(seqs)))  # one forward for the whole step
            assert decode == sorted(decode, reverse=True)  # decode rows first (the plan's decode-kernel rows)
            mixed_steps[0] += 1
        return real_eager(seqs, idx)

    a.batches._eager = eager
    rounds = [[f"s{i}" for i in range(n)] for n in (1, 3, 9, 10)] + [[f"s{i}" for i in range(10)] + ["y0", "y1"]]
    for k, sids in enumerate(rounds):
        for core in (a, b):
            if k == 2:  # a rebuild from the record: the cache is refilled from token ids
                core.import_session(core.export_session("s0"))
        assert _turns(a, sids, max_tokens=6) == _turns(b, sids, max_tokens=6), f"round {k}: {len(sids)} conversations"
    assert max(graph_rows) == 10 and len(set(graph_rows)) >= 4, graph_rows
    assert mixed_steps[0] > 0  # mixed steps ran as one forward, decode rows first
    assert a.session_stats("s0").evictions > 0  # the conversation outgrew the 4+28 cache


def test_piecewise_graphs_give_the_eager_tokens_and_pad_buckets(tiny_dir):
    """Mixed and prefill steps through the piecewise pieces (EagerCapture: the same
    static buffers and replay order as the CUDA graphs; a mixed step's decode rows
    through their recorded attention) give the greedy tokens of the plain forward,
    over rounds whose token counts land on and between buckets, a rebuild from the
    record, and a step too large for the buckets (plain forward)."""
    from swiftinfer_core.runner.piecewise import PiecewiseGraphs

    a, b = _core(tiny_dir, 10, graphs=True), _core(tiny_dir, 10, graphs=False)
    a.runner.capture_piecewise_graphs(64, EagerCapture())
    pw = a.runner.piecewise
    assert pw.sizes == [16, 32, 48, 64]
    assert pw._row_sizes == sorted(pw._rows) == a.runner.graphs.sizes == [1, 2, 4, 8, 10]  # decode rows' attention, per decode size
    used, mixed, replayed = [], [], []
    real = pw.forward

    def forward(ids, batch, rows):
        used.append(len(ids))
        if not batch.is_decode and batch.leading_single_rows():
            mixed.append(batch.leading_single_rows())
        return real(ids, batch, rows)

    def counted(m, fns):
        return [lambda: replayed.append(m) or fns[0]()] + fns[1:]

    pw.forward = forward
    pw._rows = {m: counted(m, fns) for m, fns in pw._rows.items()}
    for k, n in enumerate((1, 3, 10)):
        sids = [f"s{i}" for i in range(n)]
        if k == 2:
            for core in (a, b):
                core.import_session(core.export_session("s0"))
        assert _turns(a, sids, max_tokens=4) == _turns(b, sids, max_tokens=4), f"round {k}"
    assert len(used) >= 2 and max(used) <= 64, used  # steps of over 64 tokens took the plain forward
    # every mixed step's decode rows replayed the smallest decode size that holds them; sizes off
    # the ladder (padding rows that overlap the chunks' rows) among them
    assert replayed == [padded_size(a.runner.graphs.sizes, n) for n in mixed], (mixed, replayed)
    assert any(n not in a.runner.graphs.sizes for n in mixed), mixed
    assert a.stats().tokens_prefilled == b.stats().tokens_prefilled
    with pytest.raises(ValueError):
        PiecewiseGraphs(a.runner.model, a.runner.pool, a.runner.attn, a.runner.device, 0)


def test_fused_layers_through_decode_and_piecewise_graphs_give_the_eager_tokens(tiny_dir):
    """The GPU engine's layers (norms, residual adds and SiLU*up as kernels/fused.py's
    kernels, Llama.fuse_elementwise) replayed through the decode graphs and the
    piecewise pieces give the greedy tokens of the plain torch layers, eagerly."""
    a, b = _core(tiny_dir, 6, graphs=True, fused=True), _core(tiny_dir, 6, graphs=False)
    a.runner.capture_piecewise_graphs(64, EagerCapture())
    assert a.runner.model.fused and not b.runner.model.fused
    for k, n in enumerate((2, 6, 6)):
        sids = [f"s{i}" for i in range(n)]
        assert _turns(a, sids, max_tokens=5) == _turns(b, sids, max_tokens=5), f"round {k}"
    assert a.session_stats("s0").evictions > 0
