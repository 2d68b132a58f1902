"""Any local HF Llama-family folder loads and matches transformers (tiny random checkpoints)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from swiftinfer_core import InvalidRequestError
from swiftinfer_core.config import EngineConfig
from swiftinfer_core.runner.model_runner import ModelRunner
from swiftinfer_core.engine.engine_model import build_engine_model

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@pytest.mark.parametrize("config_cls", [LlamaConfig, MistralConfig, Qwen2Config])
def test_tiny_checkpoint_matches_transformers(tmp_path, config_cls, model_dir):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config_cls(**TINY, tie_word_embeddings=False)).eval()
    if config_cls is Qwen2Config:  # make the q/k/v biases matter
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    hf.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    m = build_engine_model(EngineConfig(model=str(tmp_path), device="cpu", sink_tokens=4, window=60, max_sessions=1))
    ids = torch.randint(0, 256, (40,))
    ours = ModelRunner(m.model, m.pool, m.attn, m.device).forward(ids.tolist(), [0], [0], [40], rows=None)
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    assert (ours - ref).abs().max() < 1e-4


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidRequestError, match="config.json"):
        build_engine_model(EngineConfig(model=str(tmp_path / "nope"), device="cpu"))


def test_random_load_format_needs_only_config_and_tokenizer(tmp_path, model_dir):
    import json

    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(num_hidden_layers=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    m = build_engine_model(EngineConfig(model=str(tmp_path), device="cpu", window=28, max_sessions=1, load_format="random"))
    w = m.model.layers[1].wqkv.weight
    assert m.args.num_layers == 2 and 0.015 < w.std().item() < 0.025
    with pytest.raises(FileNotFoundError):  # the same folder without load_format=random has no weights
        build_engine_model(EngineConfig(model=str(tmp_path), device="cpu", window=28, max_sessions=1))
