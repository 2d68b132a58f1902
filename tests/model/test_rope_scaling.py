"""Every supported rope_type gives transformers' own frequencies and attention factor;
any other type is refused when the checkpoint is loaded, by name."""

import json

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from family_checkpoints import ROPE, _phi3_rope
from swiftinfer_core import InvalidRequestError
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.model.rope_scaling import ROPE_TYPES, RopeParams, rope_frequencies
from swiftinfer_core.engine.engine_model import build_engine_model

HEAD, MAXPOS = 16, 64
CASES = {"default": {"rope_type": "default"}, **ROPE, "longrope": _phi3_rope(HEAD)}


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("seq", [24, 200])  # inside and past the original context (dynamic, longrope switch)
def test_rope_types_match_transformers(kind, seq):
    params = {**CASES[kind], "rope_theta": 5000.0}
    if kind == "longrope":
        params["original_max_position_embeddings"] = 32
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=MAXPOS, rope_parameters=dict(params))
    if kind == "default":
        rotary = LlamaRotaryEmbedding(cfg)
        want, want_factor = rotary.inv_freq, rotary.attention_scaling
    else:
        want, want_factor = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu", seq_len=seq)
    got, factor = rope_frequencies(RopeParams.from_hf(params), HEAD, MAXPOS, capacity=seq)
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)
    assert factor == pytest.approx(want_factor, rel=1e-9)
    assert kind in ROPE_TYPES


def test_unsupported_rope_type_is_refused_at_load(tmp_path):
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2).to_dict()
    cfg["rope_parameters"] = {"rope_type": "mrope", "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidRequestError, match="rope_type 'mrope' is not supported"):
        build_engine_model(EngineConfig(model=str(tmp_path), device="cpu", load_format="random"))
