"""quantization 'gguf' on the real default model (SmolLM2-135M-Instruct, whose GGUF
stores its linears in Q4_1 and its tied embedding in Q8_0): the compact engine
against the float32 model converted from the same file, and what is refused."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")

from swiftinfer_core.config import EngineConfig  # noqa: E402
from swiftinfer_core.engine.engine_model import build_engine_model  # noqa: E402
from swiftinfer_core.errors import InvalidRequestError  # noqa: E402
from swiftinfer_core.model.gguf_linear import GGUFEmbedding, GGUFLinear, compact_bytes  # noqa: E402
from swiftinfer_core.runner.model_runner import ModelRunner  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Italy is"


def _cfg(**kw) -> EngineConfig:
    return EngineConfig(**{"window": 120, "max_sessions": 1, "device": "cpu", **kw})


@pytest.fixture(scope="module", params=["torch ops", "C kernels"])
def pair(request):
    native = request.param == "C kernels"
    g = build_engine_model(_cfg(quantization="gguf", cpu_native_kernels=native))
    if native and g.model.layers[0].wqkv.kernels is None:
        pytest.skip("no C compiler on this machine")
    return g, build_engine_model(_cfg(cpu_native_kernels=native))


def prefill_logits(m, ids: list[int]) -> torch.Tensor:
    """Prefill ``ids`` in slot 0 -> logits [T, vocab] of every position."""
    return ModelRunner(m.model, m.pool, m.attn, m.device).forward(ids, [0], [0], [len(ids)], None)


def greedy(m, ids: list[int], n: int) -> list[int]:
    """Prefill, then ``n`` greedy tokens decoded one step at a time (one-token steps: CpuAttention's decode path)."""
    run = ModelRunner(m.model, m.pool, m.attn, m.device)
    tok = int(run.forward(ids, [0], [0], [len(ids)], [len(ids) - 1])[0].argmax())
    out = [tok]
    for t in range(len(ids), len(ids) + n - 1):
        tok = int(run.forward([tok], [0], [t], [1], None)[0].argmax())
        out.append(tok)
    return out


def test_layers_are_compact_and_memory(pair):
    g, f = pair
    model = g.model
    kinds = {type(l.wqkv) for l in model.layers} | {type(l.w2) for l in model.layers}
    assert kinds == {GGUFLinear}
    assert isinstance(model.embed, GGUFEmbedding) and isinstance(model.lm_head, GGUFLinear)
    assert model.lm_head.qs.data_ptr() == model.embed.qs.data_ptr()  # tied: stored once
    assert model.layers[0].wqkv.qtype == "Q4_1" and model.embed.qtype == "Q8_0"
    compact, as_f32 = compact_bytes(model)
    layers = sum(l.wqkv.blocks.nbytes() + l.wo.blocks.nbytes() + l.w13.blocks.nbytes() + l.w2.blocks.nbytes()
                 for l in model.layers)
    print(f"\ngguf at rest: all compact {compact / 2**20:.2f} MiB (as float32 {as_f32 / 2**20:.2f} MiB); "
          f"layers {layers / 2**20:.2f} MiB, embedding/head {(compact - layers) / 2**20:.2f} MiB")
    a = g.args
    per_layer = (a.num_heads + 2 * a.num_kv_heads) * a.head_dim * a.hidden_size + a.hidden_size * a.num_heads * a.head_dim \
        + 3 * a.intermediate_size * a.hidden_size
    assert layers == a.num_layers * per_layer * 20 // 32  # Q4_1: 20 bytes per 32 weights (5 bits)
    assert compact - layers == a.vocab_size * a.hidden_size * 34 // 32  # Q8_0: 34 bytes per 32 (8.5 bits)
    # the float32 engine holds the same weights in 4 bytes each, its head a second copy of the embedding
    fl = sum(p.numel() * p.element_size() for n, p in f.model.named_parameters() if "norm" not in n)
    print(f"float32 engine: {fl / 2**20:.2f} MiB of the same weights")
    assert fl == as_f32 + a.vocab_size * a.hidden_size * 4


def test_logits_and_greedy_tokens_match_the_float_model(pair):
    g, f = pair
    ids = g.tokenizer(PROMPT, add_special_tokens=False).input_ids
    lg, lf = prefill_logits(g, ids), prefill_logits(f, ids)
    err = (lg - lf).abs().max().item()
    scale = lf.abs().max().item()
    print(f"\nmax |logit gguf - logit float32| = {err:.3g} (max |logit| {scale:.3g})")
    # The float model's weights ARE the dequantised blocks (fetch.py converts through
    # gguf.quants.dequantize; gguf_load.py checks equality at load), so only the order of
    # float32 sums differs: per group here, one dot product there. float32 rounding
    # (2^-24 relative per add) over K <= 1536 terms and 30 layers stays orders of magnitude
    # under 1e-4 of the largest logit (measured: ~3e-6 of it).
    assert err < 1e-4 * scale
    assert torch.equal(lg.argmax(-1), lf.argmax(-1))
    tg, tf = greedy(g, ids, 20), greedy(f, ids, 20)
    print("greedy:", repr(g.tokenizer.decode(tg)))
    assert tg == tf


def test_refused():
    with pytest.raises(InvalidRequestError, match="CPU in float32"):
        _cfg(quantization="gguf", dtype="bfloat16")
    with pytest.raises(InvalidRequestError, match="CPU in float32"):
        _cfg(quantization="gguf", load_format="random")
    with pytest.raises(InvalidRequestError, match="tp_size 1"):
        _cfg(quantization="gguf", tp_size=2)


def test_a_folder_without_its_gguf_is_refused(model_dir, tmp_path):
    """A Llama folder with no GGUF beside it (any float checkpoint) cannot run 'gguf'."""
    import shutil

    from swiftinfer_core.model.loader import read_args
    from swiftinfer_core.runner.resolve import rank_config

    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(InvalidRequestError, match="needs the GGUF"):
        rank_config(_cfg(quantization="gguf", model=str(tmp_path)), tmp_path, read_args(tmp_path))


def test_a_gguf_that_is_not_the_folders_is_refused():
    """The blocks must dequantise to the float weights loaded: a model with other weights is refused at load."""
    from swiftinfer_core.model.families import build_model
    from swiftinfer_core.model.fetch import ensure_default_gguf
    from swiftinfer_core.model.gguf_load import load_gguf_blocks
    from swiftinfer_core.model.loader import read_args
    from swiftinfer_core.runner.weights import fill_random

    path = ensure_default_gguf()
    model = build_model(read_args(path.parent))
    fill_random(model, 0)
    with pytest.raises(InvalidRequestError, match="not the float weight"):
        load_gguf_blocks(model, path, head=True)
